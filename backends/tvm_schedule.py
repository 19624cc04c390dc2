"""Hand-written schedules, no tuning: kernels find them by their `cllm.kernel` attribute.

CPU (LLVM: AVX-512 or AVX2 on x86, NEON on aarch64): weights are tiles of output columns, contiguous
along N (tvm_layout), so every matmul vectorises over a tile's columns with contiguous loads and a
broadcast activation. The GEMV (decode, m = 1) decodes each weight once, straight into the
FMA; the GEMM (prefill) decodes a K x N tile into a small local buffer once and reuses it for
every token row. Attention vectorises over context positions (keys are stored transposed)
and head dims. Everything else keeps TVM's default lowering (small elementwise work).
"""
from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx

K_TILE = 32   # a 32 x 64 decoded weight tile = 8 KiB, L1-resident


def _kernel_name(func: Any) -> str:
    return str(func.attrs["cllm.kernel"]) if func.attrs and "cllm.kernel" in func.attrs else ""


def schedule_module(mod: Any, target: Any) -> Any:
    """Return `mod` with every cllm kernel scheduled for `target` (CPU kinds only here)."""
    if target.kind.name == "cuda":
        from .tvm_schedule_cuda import schedule_module_cuda
        return schedule_module_cuda(mod, target)
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = _kernel_name(func)
        sch = None
        if name.startswith("matmul") and not int(func.attrs.get("cllm.int8", 0)):
            sch = _matmul_cpu(func)
        elif name == "attention":
            sch = _attention_cpu(func)
        if sch is not None:
            mod[gv] = sch.mod["main"]
    return mod


def _matmul_cpu(func: Any) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    nt = int(func.attrs["cllm.tile"])
    if _has_block(sch, "partial"):
        return _gemv_grouped_cpu(sch, nt)
    block, deq = sch.get_sblock("matmul"), sch.get_sblock("deq")
    m, n, k = sch.get_loops(block)
    no, ni = sch.split(n, [None, nt])
    if int(func.attrs["cllm.gemv"]):  # dense GEMV: decode straight into the FMA
        sch.compute_inline(deq)
        sch.reorder(no, m, k, ni)
        sch.parallel(no)
        sch.vectorize(ni)
        sch.decompose_reduction(block, k)
        return sch
    ko, ki = sch.split(k, [None, K_TILE])
    sch.reorder(no, ko, m, ki, ni)
    sch.compute_at(deq, ko)   # decode a K_TILE x nt tile once, reuse it for every row
    sch.parallel(no)
    sch.vectorize(ni)
    sch.vectorize(sch.get_loops(deq)[-1])
    sch.decompose_reduction(block, ko)
    return sch


def _has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 - TVM raises its own error type for a missing block
        return False


def _gemv_grouped_cpu(sch: s_tir.Schedule, nt: int) -> s_tir.Schedule:
    """Per output tile: for each block j, P (nt lanes, registers) += a[k] * code[k, :]; then C += s * (...)."""
    c, p = sch.get_sblock("matmul"), sch.get_sblock("partial")
    m, n, j = sch.get_loops(c)
    no, ni = sch.split(n, [None, nt])
    sch.reorder(no, m, j, ni)
    sch.compute_at(p, j)
    sch.set_scope(p, 0, "local")        # the tile's partial sums live in registers, not in L1
    loops = sch.get_loops(p)
    sch.reorder(loops[-1], loops[-2])   # kin outside, n lanes inside
    sch.vectorize(sch.get_loops(p)[-1])
    sch.parallel(no)
    sch.vectorize(ni)
    sch.decompose_reduction(p, sch.get_loops(p)[-2])
    sch.decompose_reduction(c, j)
    return sch


def _attention_cpu(func: Any) -> s_tir.Schedule:
    """Scores: for each head dim d, stream that row of the (transposed) key cache and FMA it into
    the query's score row (L1-resident), 16 positions a vector. Row max / sum: 16 lanes each
    (rfactor), reduced at the end. Values: stream cache rows, 64 head dims a vector."""
    sch = s_tir.Schedule(func)
    scores = sch.get_sblock("scores")
    h, i, t, d = sch.get_loops(scores)
    to, ti = sch.split(t, [None, 16])
    sch.reorder(h, i, d, to, ti)
    sch.vectorize(ti)
    sch.decompose_reduction(scores, d)
    sch.compute_inline(sch.get_sblock("masked"))
    for name in ("shifted", "T_fast_exp"):  # shifted stays a buffer: fast_exp reads its input ~20 times
        blk = sch.get_sblock(name)
        sch.vectorize(sch.split(sch.get_loops(blk)[-1], [None, 16])[1])
    for name in ("rowmax", "rowsum"):
        blk = sch.get_sblock(name)
        _, _, r = sch.get_loops(blk)
        ro, ri = sch.split(r, [None, 16])
        rf = sch.rfactor(ri, 2)
        red, lane = sch.get_loops(rf)[-2:]   # lanes stay innermost: 16 running max/sum
        sch.vectorize(lane)
        sch.decompose_reduction(rf, red)
    acc = sch.get_sblock("attn_acc")
    i, h, dd, t = sch.get_loops(acc)
    sch.reorder(i, h, t, dd)
    aw = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(aw, h)
    sch.vectorize(sch.get_loops(aw)[-1])
    sch.vectorize(dd)
    sch.decompose_reduction(acc, t)
    return sch
