/* Run one TVM-compiled kernel object outside TVM (e.g. an aarch64 kernel under qemu-aarch64).
 *
 * usage: kernel_runner SPEC
 * SPEC has one line per kernel argument, in order:  PATH DTYPE_CODE BITS NDIM D0 D1 ...
 * (DLPack dtype codes: 0 int, 1 uint, 2 float). The last argument is the output: it is
 * written back to PATH after the call. The runner supplies the few runtime hooks a kernel
 * object needs: a serial parallel-launch, workspace allocation and an error printer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

typedef struct { void* sync_handle; int32_t num_task; } ParallelEnv;
typedef int (*ParallelLambda)(int task_id, ParallelEnv* penv, void* cdata);

static int serial_launch(ParallelLambda f, void* cdata, int num_task) {
  ParallelEnv env = {NULL, 1};
  (void)num_task;
  return f(0, &env, cdata);  /* one task covers the whole range */
}
int (*__TVMBackendParallelLaunch)(ParallelLambda, void*, int) = serial_launch;

/* Workspace for a kernel's local buffers (e.g. the GEMM's decoded weight tile). */
static void* alloc_workspace(int device_type, int device_id, uint64_t nbytes, int dtype_code, int dtype_bits) {
  (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
  return aligned_alloc(64, (nbytes + 63) / 64 * 64);
}
static int free_workspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  free(ptr);
  return 0;
}
void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = alloc_workspace;
int (*__TVMBackendFreeWorkspace)(int, int, void*) = free_workspace;

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "%s:", kind);
  for (int i = 0; i < n; ++i) fprintf(stderr, " %s", parts[i]);
  fprintf(stderr, "\n");
}

extern int __tvm_ffi_main(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result);

#define MAX_ARGS 16
int main(int argc, char** argv) {
  if (argc != 2) { fprintf(stderr, "usage: %s SPEC\n", argv[0]); return 2; }
  FILE* spec = fopen(argv[1], "r");
  if (!spec) { perror(argv[1]); return 2; }
  static char paths[MAX_ARGS][512];
  static int64_t shapes[MAX_ARGS][8];
  DLTensor tensors[MAX_ARGS];
  TVMFFIAny args[MAX_ARGS];
  size_t nbytes[MAX_ARGS];
  int n = 0, code, bits, ndim;
  while (n < MAX_ARGS && fscanf(spec, "%511s %d %d %d", paths[n], &code, &bits, &ndim) == 4) {
    size_t count = 1;
    for (int d = 0; d < ndim; ++d) { fscanf(spec, "%ld", &shapes[n][d]); count *= (size_t)shapes[n][d]; }
    nbytes[n] = count * (size_t)bits / 8;
    /* 64-byte aligned, as TVM allocates tensors: x86 kernels use aligned vector loads on them */
    size_t padded = (nbytes[n] + 63) / 64 * 64;
    void* data = aligned_alloc(64, padded ? padded : 64);
    memset(data, 0, padded ? padded : 64);
    FILE* f = fopen(paths[n], "rb");
    if (f) { if (fread(data, 1, nbytes[n], f) != nbytes[n]) { fprintf(stderr, "short read %s\n", paths[n]); return 2; } fclose(f); }
    DLTensor t = {data, {kDLCPU, 0}, ndim, {(uint8_t)code, (uint8_t)bits, 1}, shapes[n], NULL, 0};
    tensors[n] = t;
    memset(&args[n], 0, sizeof(TVMFFIAny));
    args[n].type_index = kTVMFFIDLTensorPtr;
    args[n].v_ptr = &tensors[n];
    ++n;
  }
  fclose(spec);
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  int rc = __tvm_ffi_main(NULL, args, n, &result);
  if (rc != 0) { fprintf(stderr, "kernel returned %d\n", rc); return 1; }
  FILE* out = fopen(paths[n - 1], "wb");
  fwrite(tensors[n - 1].data, 1, nbytes[n - 1], out);
  fclose(out);
  return 0;
}
