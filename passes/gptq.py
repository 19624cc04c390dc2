"""`gptq`: Hessian-aware rounding with error feedback (Frantar et al., 2023, "GPTQ").

Columns are rounded one at a time onto a grid; each rounding error is spread over the columns
not yet rounded through the inverse Hessian's Cholesky factor, in lazy blocks of `block`
columns. The grid is the uniform int format of `quant` (groups fitted on the error-updated
weights as GPTQ does, or fitted up front with static=true, which act-order requires because
our groups are contiguous), or whatever grid the tensor already has: a `codebook` LUT or an
earlier `quant` — so `codebook{bits=3},gptq` rounds onto the learned codebook with feedback.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..errors import PassError
from ..ir import TensorNode
from ..passes_base import Param, Pass, PassStats, measure, register_pass
from ..reprs import Quantized, Representation
from .quant import _quantize_block, _search_block, grid_params


class Grid(Protocol):
    group: int  # >0: call fit() at the start of every group of columns (dynamic groups)

    def fit(self, x: torch.Tensor, gi: int) -> None: ...

    def round(self, w: torch.Tensor, col: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def build(self, codes: torch.Tensor) -> Representation: ...


class UniformGrid:
    """Per-group uniform grid of `quant` (int zero point, fp16 min, or symmetric)."""

    def __init__(self, rows: int, cols: int, bits: int, group: int, sym: bool, zero: str,
                 start: Quantized | None = None, search: bool = False,
                 weights: torch.Tensor | None = None) -> None:
        self.bits, self.g, self.sym, self.zero = bits, group or cols, sym, zero
        self.search, self.weights = search, weights
        ng = -(-cols // self.g)
        self.scale = torch.ones(rows, ng)
        self.offset = torch.zeros(rows, ng)  # w = code * scale - offset
        self.q = start
        self.group = 0 if start is not None else self.g  # static grid: nothing to fit while rounding
        self.parts: list[Quantized] = []
        if start is not None:
            for gi in range(ng):
                self._take(start, gi, gi)

    def _take(self, q: Quantized, gi: int, src: int) -> None:
        """Use column group `src` of `q` as this grid's group `gi`."""
        s = torch.from_numpy(q.scales[:, src].astype(np.float32))
        self.scale[:, gi] = s
        if q.mins is not None:
            self.offset[:, gi] = -torch.from_numpy(q.mins[:, src].astype(np.float32))
        else:
            z = (torch.from_numpy(q.zeros[:, src].astype(np.float32)) if q.zeros is not None
                 else torch.full_like(s, float(1 << (q.bits - 1))))
            self.offset[:, gi] = z * s

    def fit(self, x: torch.Tensor, gi: int) -> None:
        """Fit group `gi` on the (error-updated) columns `x`, as GPTQ does with dynamic groups."""
        if self.search:
            wt = None if self.weights is None else self.weights[gi * self.g:gi * self.g + x.shape[1]]
            q = _search_block(x, self.bits, x.shape[1], self.sym, self.zero, wt)
        else:
            q = _quantize_block(x, self.bits, x.shape[1], self.sym, self.zero)
        self.parts.append(q)
        self._take(q, gi, 0)

    def round(self, w: torch.Tensor, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        gi = col // self.g
        s, off = self.scale[:, gi], self.offset[:, gi]
        codes = torch.clamp(torch.round((w + off) / s), 0, (1 << self.bits) - 1)
        return codes * s - off, codes

    def build(self, codes: torch.Tensor) -> Quantized:
        c = codes.to(torch.uint8).numpy()
        if self.group:  # dynamic: the fitted groups carry the scales
            ps = self.parts
            cat = lambda xs: None if xs[0] is None else np.concatenate(xs, axis=1)  # noqa: E731
            return Quantized(c, cat([p.scales for p in ps]), cat([p.zeros for p in ps]), self.bits, self.g,
                             cat([p.mins for p in ps]))
        q = self.q
        assert q is not None
        return Quantized(c, q.scales, q.zeros, q.bits, q.group, q.mins)


_HINV: list = []  # [(H, act_order, damp, perm, dead, Hinv)]: the allocator's candidates for one tensor share it


def inverse_hessian(H: torch.Tensor, act_order: bool, damp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(perm, dead columns, upper Cholesky factor of the damped inverse Hessian in perm order).
    Independent of the grid, so it is computed once per tensor, not once per candidate."""
    if _HINV and _HINV[0][0] is H and _HINV[0][1:3] == (act_order, damp):
        return _HINV[0][3:]
    H64 = H.clone().to(torch.float64)
    dead = H64.diagonal() == 0
    H64[dead, dead] = 1
    perm = torch.argsort(H64.diagonal(), descending=True) if act_order else torch.arange(H.shape[0])
    H64 = H64[perm][:, perm]
    H64.diagonal().add_(damp * H64.diagonal().mean())
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H64)), upper=True).to(torch.float32)
    except torch.linalg.LinAlgError:
        raise PassError("the calibration Hessian is not positive definite even after dampening",
                        hint="raise damp= (e.g. 0.1) or calibrate on more tokens") from None
    _HINV[:] = [(H, act_order, damp, perm, dead, Hinv)]
    return perm, dead, Hinv


def gptq(w: torch.Tensor, H: torch.Tensor, grid: Grid, damp: float = 0.01, block: int = 128,
         act_order: bool = False) -> torch.Tensor:
    """Round `w` [rows, cols] onto `grid` with GPTQ error feedback; returns the codes."""
    perm, dead, Hinv = inverse_hessian(H, act_order, damp)
    W = w.clone().to(torch.float32)
    W[:, dead] = 0
    cols = W.shape[1]
    W = W[:, perm]
    codes = torch.zeros_like(W)
    prune = getattr(grid, "prune", None)  # SparseGPT chooses masks inside this loop
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if prune is not None:
                prune(W1[:, i:], Hinv1.diagonal()[i:], i1 + i)
            if grid.group and (i1 + i) % grid.group == 0:  # dynamic groups see the updated weights
                grid.fit(torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :grid.group], (i1 + i) // grid.group)
            q, c = grid.round(W1[:, i], col)
            codes[:, i1 + i] = c
            err = (W1[:, i] - q) / Hinv1[i, i]
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)  # in place: no rows x block temporary
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return codes[:, torch.argsort(perm)]


@register_pass
class GPTQPass(Pass):
    yields = "quant"
    name = "gptq"
    help = "GPTQ: Hessian-based rounding with error feedback onto int (or the tensor's codebook) grid"
    params = grid_params(search=True) + (  # the grid params apply when the tensor is still dense
        Param("damp", float, 0.01, "dampening, as a fraction of the mean Hessian diagonal", check=lambda d: d > 0),
        Param("block", int, 128, "columns per lazy batch update", check=lambda b: b >= 1),
        Param("act_order", bool, True, "round columns by decreasing Hessian diagonal (implies static groups)"),
        Param("static", bool, False, "fit group scales on the original weights before rounding"),
    )
    requires = frozenset({"calibrated"})
    provides = frozenset({"quantized"})

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        if self.ctx.rate_only:  # the allocator sizing a budget before calibration: GPTQ's codes on
            if node.rep.kind == "dense":  # the RTN grid are the same container bytes
                from .quant import quantize_rtn
                a = self.args_for(node)
                node.rep = quantize_rtn(self.ctx.original(node), a["bits"], a["group"], a["sym"], a["zero"], False)
            return
        if self.ctx.calib is None or not self.ctx.calib.has(node.name):
            stats.notes.append(f"{node.name}: no calibration statistics, left as is")
            return
        grid = self.grid(node)
        if grid is None:
            stats.notes.append(f"{node.name}: GPTQ cannot round a {node.rep.describe()} tensor, left as is")
            return
        w = self.ctx.original(node)
        a = self.args_for(node)
        # a pruned tensor keeps SparseGPT's left-to-right order: its masks were chosen in it
        order = a["act_order"] and not getattr(grid, "natural_order", False)
        codes = gptq(w, self.ctx.calib.H(node.name), grid, a["damp"], a["block"], order)
        node.rep = grid.build(codes)
        stats.tensors.append(measure(node, w, self.ctx))

    def grid(self, node: TensorNode) -> Grid | None:
        rows, cols = node.shape
        rep = node.rep
        if isinstance(rep, Quantized):
            return UniformGrid(rows, cols, rep.bits, rep.group, rep.symmetric, "float" if rep.mins is not None else "int", rep)
        from ..reprs_sparse import Sparse
        if isinstance(rep, Sparse) and isinstance(rep.values, Quantized):
            from .nm import SparseQuantGrid
            return SparseQuantGrid(rep)
        if hasattr(rep, "grid"):
            return rep.grid()  # e.g. a codebook
        if rep.kind != "dense":
            return None
        a = self.args_for(node)
        hdiag = self.ctx.calib.input_energy(node.name) if self.ctx.calib is not None else None
        if a["static"] or a["act_order"]:
            from .quant import quantize_rtn
            start = quantize_rtn(self.ctx.original(node), a["bits"], a["group"], a["sym"], a["zero"], a["search"], hdiag)
            return UniformGrid(rows, cols, a["bits"], a["group"], a["sym"], a["zero"], start)
        return UniformGrid(rows, cols, a["bits"], a["group"], a["sym"], a["zero"], search=a["search"], weights=hdiag)
