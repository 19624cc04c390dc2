"""CUDA schedules (Jetson Orin, sm_87): every cllm kernel gets a thread-per-output mapping.

Each stage's spatial loops are fused and bound to blockIdx.x / threadIdx.x (128 threads);
reductions run serially inside a thread. With the tiled weight layout (tvm_layout), the 64
threads of a tile read 64 consecutive columns, so weight loads coalesce. The decode GEMV's
per-group partial sums stay in registers. This is a correct, untuned baseline: the issue's
speed goal is for x86; Orin speed can only be measured on an Orin (`cllm-validate --device`).
Ops TVM legalises itself (RMSNorm, SiLU, adds) are scheduled by TVM's dlight GPU rules.
"""
from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx

THREADS = 128


def _bind_spatial(sch: s_tir.Schedule, block: Any) -> None:
    loops = sch.get_loops(block)
    spatial = [v for v in sch.get(block).iter_vars if int(v.iter_type) == 0]
    n = len(spatial)
    if n == 0:
        loops = [sch.add_unit_loop(block)] + list(loops)
        n = 1
    fused = sch.fuse(*loops[:n]) if n > 1 else loops[0]
    bx, tx = sch.split(fused, [None, THREADS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def schedule_kernel_cuda(func: tirx.PrimFunc) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    for name in ("deq", "masked", "shifted"):
        try:
            sch.compute_inline(sch.get_sblock(name))
        except Exception:  # noqa: BLE001 - block absent in this kernel
            pass
    blocks = sch.get_child_blocks(root)
    for block in blocks:
        if sch.get(block).name_hint == "partial":
            continue  # computed per thread inside the GEMV, below
        _bind_spatial(sch, block)
    try:
        part = sch.get_sblock("partial")
    except Exception:  # noqa: BLE001
        return sch
    c = sch.get_sblock("matmul")
    sch.compute_at(part, sch.get_loops(c)[-1])   # P[j, n] of this thread's column, in registers
    sch.set_scope(part, 0, "local")
    return sch


def schedule_module_cuda(mod: Any, target: Any) -> Any:
    from tvm import relax
    from tvm.s_tir import dlight as dl
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and func.attrs and "cllm.kernel" in func.attrs:
            mod[gv] = schedule_kernel_cuda(func).mod["main"].with_attr("tirx.is_scheduled", True)
    with target:
        mod = relax.transform.LegalizeOps()(mod)
        mod = dl.ApplyDefaultSchedule(dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    return mod
