"""Host side of the Triton kernels: pick a tile configuration, launch, reduce the K splits.

Tile configurations are data (`triton_configs.json`, one entry per kernel kind and batch
bucket), chosen offline by `bench/triton_autotune.py` on a GPU and committed, so a run never
spends its first seconds autotuning and two runs launch the same kernels.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import torch

from .triton_layout import ZERO_MODES, GpuWeight, Spec

BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes a configuration is chosen for (larger: the last)


@functools.cache
def configs() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("triton_configs.json").read_text())


def bucket(m: int) -> int:
    return next((b for b in BUCKETS if m <= b), BUCKETS[-1])


def config_for(spec: Spec, m: int) -> dict[str, int]:
    """The committed tile configuration for this kernel kind and batch (exact kind, else default)."""
    table = configs()["configs"]
    key = str(bucket(m))
    return dict(table.get(spec.kind, {}).get(key) or table["default"][key])


@functools.cache
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # Triton's interpreter runs programs one after another: no SMs to fill
    return _sms(device.index if device.index is not None else torch.cuda.current_device())


def split_for(spec: Spec, m: int, cfg: dict[str, int], sms: int) -> int:
    """K splits so that a small batch still launches ~2 programs per SM (long K only)."""
    tiles = -(-spec.n // cfg["BLOCK_N"]) * -(-m // cfg["BLOCK_M"])
    want = max(1, -(-2 * sms // tiles))
    return max(1, min(want, spec.k // (4 * cfg["BLOCK_K"]) or 1, 16))


def constexprs(spec: Spec, cfg: dict[str, int], x_dtype: torch.dtype) -> dict[str, Any]:
    """Every compile-time constant of `mm_kernel` for one weight and configuration."""
    from .triton_kernels import KINDS
    quant_values = spec.kind == "quant" or (spec.kind == "sparse" and spec.bits < 16)
    use_dot = cfg["BLOCK_M"] >= 16
    return dict(KIND=KINDS[spec.kind], BITS=spec.bits if spec.kind != "dense" else 16,
                GROUP=spec.group, ZMODE=ZERO_MODES[spec.zero] if quant_values else 0,
                PER_ROW=spec.per_row, D=spec.d, STAGES=spec.stages, NKEEP=max(spec.nm[0], 1),
                MGRP=max(spec.nm[1], 1), IBITS=max(1, (max(spec.nm[1], 2) - 1).bit_length()),
                RANK=spec.rank, RANK_P=max(16 if use_dot else 1, triton_next_pow2(spec.rank)),
                BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], USE_DOT=use_dot,
                PREC="ieee" if x_dtype == torch.float32 else "tf32")


def triton_next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def matmul(x: torch.Tensor, g: GpuWeight, split: int | None = None, cfg: dict[str, int] | None = None,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x @ W^T for x [..., K] and a lowered weight; fp32 accumulation, output in x's dtype."""
    from .triton_kernels import mm_kernel
    spec = g.spec
    lead = x.shape[:-1]
    x2 = x.reshape(-1, spec.k).contiguous()
    m = x2.shape[0]
    cfg = cfg or config_for(spec, m)
    split = split or split_for(spec, m, cfg, sm_count(x.device))
    kps = -(-spec.k // split)
    kps = -(-kps // cfg["BLOCK_K"]) * cfg["BLOCK_K"]  # whole K tiles per split
    split = -(-spec.k // kps)
    out = torch.empty((split, m, spec.n), device=x.device, dtype=torch.float32)
    t = g.tensors
    anyp = t.get("q", t.get("w", t.get("lut")))
    lowrank = (x2.float() @ t["V"].float().T).contiguous() if spec.rank else anyp
    ptrs = [t.get(k, anyp) for k in ("q", "s", "z", "m", "lut", "c", "idx", "w")]
    grid = (-(-spec.n // cfg["BLOCK_N"]), -(-m // cfg["BLOCK_M"]), split)
    mm_kernel[grid](x2, out, *ptrs, lowrank, t.get("U", anyp), m, spec.n, spec.k, x2.stride(0), kps,
                    **constexprs(spec, cfg, x2.dtype), num_warps=cfg.get("num_warps", 4),
                    num_stages=cfg.get("num_stages", 2))
    y = out[0] if split == 1 else out.sum(0)
    return y.to(out_dtype or x.dtype).reshape(*lead, spec.n)


def reference(x: torch.Tensor, w_dense: torch.Tensor) -> torch.Tensor:
    """What every kernel must equal: x @ W^T in float64 with the IR's decoded W."""
    return (x.double() @ w_dense.double().T).to(x.dtype)
