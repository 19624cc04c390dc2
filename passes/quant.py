"""`quant`: uniform per-group integer quantization with round-to-nearest (RTN).

Groups run along the input dimension (columns of a [out, in] weight). Asymmetric groups
include zero in their range (as GPTQ's quantizer does) so the integer zero point always
fits in `bits`; a ragged last group (e.g. 576 columns at g128) is allowed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import PassError
from ..ir import TensorNode
from ..passes_base import Param, Pass, PassStats, measure, register_pass, stats_from_sums
from ..reprs import Quantized
from ..reprs_sparse import Sparse


def group_size(value: object) -> int:
    if str(value).lower() in ("channel", "per-channel", "0", "-1"):
        return 0
    g = int(value)  # type: ignore[arg-type]
    if g < 8:
        raise ValueError(value)
    return g


_BLOCK_ELEMS = 1 << 22  # weights per step (16 MB of float32): bounds every temporary


def row_block(cols: int) -> int:
    return max(1, _BLOCK_ELEMS // max(cols, 1))


def quantize_rtn(w: torch.Tensor, bits: int, group: int, sym: bool, zero: str = "int",
                 search: bool = False, weights: torch.Tensor | None = None) -> Quantized:
    """Quantize a 2-D float tensor; the returned codes decode with `Quantized.decode`."""
    return quantize_rows(lambda a, b: w[a:b].to(torch.float32), w.shape, bits, group, sym, zero,
                         search=search, weights=weights)[0]


def quantize_rows(rows: Callable[[int, int], torch.Tensor], shape: tuple[int, ...], bits: int, group: int,
                  sym: bool, zero: str = "int", name: str = "?", search: bool = False,
                  weights: torch.Tensor | None = None) -> tuple[Quantized, float, float]:
    """Quantize block by block from a row reader; also return (squared error, signal) sums.

    Only one block of float weights is in memory at a time, so a tensor larger than RAM works.
    """
    step = row_block(shape[1])
    parts, err, sig = [], 0.0, 0.0
    for r in range(0, shape[0], step):
        x = rows(r, r + step)
        if not torch.isfinite(x).all():
            raise PassError("weights contain NaN or Inf", tensor=name, hint="the checkpoint is damaged")
        q = _search_block(x, bits, group, sym, zero, weights) if search else _quantize_block(x, bits, group, sym, zero)
        err += (q.decode() - x).pow_(2).sum(dtype=torch.float64).item()
        sig += x.pow(2).sum(dtype=torch.float64).item()
        parts.append(q)
    return _concat(parts), err, sig


def _concat(parts: list[Quantized]) -> Quantized:
    if len(parts) == 1:
        return parts[0]
    def cat(xs: list) -> np.ndarray | None:
        if xs[0] is None:
            return None
        out = np.concatenate(xs)
        xs.clear()  # drop the blocks as soon as they are copied
        return out
    codes = cat([p.codes for p in parts])
    return Quantized(codes, cat([p.scales for p in parts]), cat([p.zeros for p in parts]),  # type: ignore[arg-type]
                     parts[0].bits, parts[0].group, cat([p.mins for p in parts]))


SHRINK = torch.linspace(1.0, 0.55, 10)  # clipping ratios tried by search=true


def _search_block(w: torch.Tensor, bits: int, group: int, sym: bool, zero: str,
                  weights: torch.Tensor | None) -> Quantized:
    """Per group, the clipping of the range that minimises the (input-energy weighted) squared
    error, as GPTQ's mse grid and llama.cpp's make_qx_quants do. Each ratio is tried as a
    quantize-dequantize in torch (no codes are built), then the winner is quantized once."""
    rows, cols = w.shape
    x, g, ng = _grouped(w, group)
    wt = torch.ones(cols) if weights is None else weights.to(torch.float32)
    wt = torch.nn.functional.pad(wt, (0, ng * g - cols)).view(1, ng, g)  # padding columns weigh 0
    best_err = torch.full((rows, ng), float("inf"))
    best = torch.ones(rows, ng)
    for alpha in SHRINK:
        codes, scale, offset = _grid(x, bits, sym, zero, torch.full((rows, ng), float(alpha)))
        deq = (codes * scale[..., None] + offset[..., None]) if zero == "float" and not sym else \
            (codes - offset[..., None]) * scale[..., None]
        err = ((deq - x).pow_(2) * wt).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, alpha, best)
    return _quantize_block(w, bits, group, sym, zero, best)


def _grouped(w: torch.Tensor, group: int) -> tuple[torch.Tensor, int, int]:
    """w as [rows, ngroups, g] float32; a ragged last group is padded by repeating the last
    column, so padding never widens a group's range."""
    rows, cols = w.shape
    g = group or cols
    ngroups = -(-cols // g)
    pad = ngroups * g - cols
    x = w.to(torch.float32)
    if pad:
        x = torch.cat([x, x[:, -1:].expand(rows, pad)], dim=1)
    return x.view(rows, ngroups, g), g, ngroups


def _grid(x: torch.Tensor, bits: int, sym: bool, zero: str,
          k: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, offset) of grouped weights, ranges clipped by `k`. Decode: symmetric and
    int-zero w = (code - offset) * scale; zero=float w = code * scale + offset (offset = min)."""
    rows, ngroups, _ = x.shape
    qmax = (1 << bits) - 1
    k = torch.ones(rows, ngroups) if k is None else k
    if sym:
        half = 1 << (bits - 1)
        scale = x.abs().amax(-1) * k / max(half - 1, 1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale).half().float()
        codes = torch.clamp(torch.round(x / scale[..., None]) + half, 0, qmax)
        return codes, scale, torch.full_like(scale, float(half))
    if zero == "float":  # llama.cpp Q4_1 style: true min/max, min stored as fp16
        lo = (x.amin(-1) * k).half().float()
        scale = (x.amax(-1) * k - lo) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale).half().float()
        codes = torch.clamp(torch.round((x - lo[..., None]) / scale[..., None]), 0, qmax)
        return codes, scale, lo
    lo = torch.clamp(x.amin(-1) * k, max=0.0)
    hi = torch.clamp(x.amax(-1) * k, min=0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale).half().float()
    zp = torch.clamp(torch.round(-lo / scale), 0, qmax)
    codes = torch.clamp(torch.round(x / scale[..., None]) + zp[..., None], 0, qmax)
    return codes, scale, zp


def _quantize_block(w: torch.Tensor, bits: int, group: int, sym: bool, zero: str,
                    shrink: torch.Tensor | None = None) -> Quantized:
    rows, cols = w.shape
    x, g, ngroups = _grouped(w, group)
    codes, scale, offset = _grid(x, bits, sym, zero, shrink)
    codes_np = np.ascontiguousarray(codes.view(rows, ngroups * g)[:, :cols].to(torch.uint8).numpy())
    if sym:
        return Quantized(codes_np, scale.half().numpy(), None, bits, g)
    if zero == "float":
        return Quantized(codes_np, scale.half().numpy(), None, bits, g, offset.half().numpy())
    return Quantized(codes_np, scale.half().numpy(), offset.to(torch.uint8).numpy(), bits, g)


def grid_params(search: bool) -> tuple[Param, ...]:
    """The uniform-grid parameters `quant` and `gptq` share (they differ only in search's default)."""
    return (
        Param("bits", int, 4, "bits per weight code, 2-8", check=lambda b: 2 <= b <= 8),
        Param("group", group_size, 128, "weights per scale along the input dim; 'channel' = per output row"),
        Param("sym", bool, False, "symmetric (no zero point) instead of asymmetric min/max"),
        Param("zero", str, "int", "asymmetric offset: 'int' zero point (GPTQ) or 'float' fp16 min (llama.cpp Q4_1)",
              choices=("int", "float")),
        Param("search", bool, search, "search each group's clipping for least error (weighted by input energy when calibrated)"),
    )


@register_pass
class QuantPass(Pass):
    yields = "quant"
    name = "quant"
    help = "uniform integer quantization per group (RTN), 2-8 bits"
    params = grid_params(search=False)
    provides = frozenset({"quantized"})

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        if isinstance(node.rep, Sparse) and node.rep.values.kind == "dense":
            return self._sparse_values(node, stats)
        if node.rep.kind != "dense":
            stats.notes.append(f"{node.name}: already {node.rep.describe()}, left as is")
            return
        if len(node.shape) != 2:
            raise PassError(f"cannot quantize a {len(node.shape)}-D tensor", tensor=node.name,
                            hint="add it to skip= or narrow match=")
        a = self.args_for(node)
        q, err, sig = quantize_rows(node.rep.rows, node.shape, a["bits"],  # type: ignore[attr-defined]
                                    a["group"], a["sym"], a["zero"], node.name, a["search"], self._weights(node))
        if not np.isfinite(q.scales).all():
            raise PassError("a scale overflows float16", tensor=node.name, hint="use a smaller group size")
        node.rep = q
        st = stats_from_sums(node, err, sig)
        cal = self.ctx.calib
        if cal is not None and cal.has(node.name) and not self.ctx.simulating:
            st.out_mse = cal.output_mse(node.name, q.decode() - self.ctx.original(node))
        stats.tensors.append(st)

    def _weights(self, node: TensorNode) -> torch.Tensor | None:
        cal = self.ctx.calib
        if cal is None or not cal.has(node.name):
            return None
        return cal.input_energy(node.name)

    def _sparse_values(self, node: TensorNode, stats: PassStats) -> None:
        """Quantize the kept values of a pruned tensor (groups run over kept values)."""
        sp = node.rep
        vals = sp.values.decode()  # type: ignore[attr-defined]
        a = self.args_for(node)
        q = quantize_rtn(vals, a["bits"], a["group"], a["sym"], a["zero"], a["search"])
        node.rep = Sparse(sp.mask, q, sp.n, sp.m)  # type: ignore[attr-defined]
        stats.tensors.append(measure(node, self.ctx.original(node), self.ctx))
