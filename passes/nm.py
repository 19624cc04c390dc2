"""`nm`: N:M structured (2:4, 4:8) or per-row unstructured pruning.

method=magnitude scores |W|; wanda scores |W| * ||x_j|| (Sun et al., 2023); sparsegpt runs
the OBS update of Frantar & Alistarh (2023): columns are visited left to right through
GPTQ's loop, the mask of each M-group (or each block, unstructured) is chosen by
w^2 / [H^-1]_jj^2 when the loop reaches it, and every pruned weight's error is compensated
on the columns not yet visited. The kept values stay f16 until a later `quant` pass
quantizes them (2:4 + int4).
"""
from __future__ import annotations

import torch

from ..errors import PassError
from ..ir import TensorNode
from ..passes_base import Param, Pass, PassStats, measure, register_pass
from ..reprs import Dense
from ..reprs_sparse import Sparse
from .gptq import gptq


def keep_mask(score: torch.Tensor, n: int, m: int, sparsity: float) -> torch.Tensor:
    """Keep the top-n of every m along rows (m > 0) or the top (1 - sparsity) of every row."""
    rows, cols = score.shape
    if m:
        s = score.reshape(rows, cols // m, m)
        top = s.topk(n, dim=-1).indices
        return torch.zeros_like(s, dtype=torch.bool).scatter_(-1, top, True).reshape(rows, cols)
    k = cols - round(cols * sparsity)
    top = score.topk(k, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)


class Pruner:
    """SparseGPT's mask selection inside the GPTQ loop; 'codes' carry the kept (updated) values."""

    group = 0

    def __init__(self, rows: int, cols: int, n: int, m: int, sparsity: float, block: int) -> None:
        self.n, self.m, self.sparsity, self.block = n, m, sparsity, block
        self.mask = torch.ones(rows, cols, dtype=torch.bool)

    def prune(self, w_rest: torch.Tensor, hinv_diag: torch.Tensor, col: int) -> None:
        span = self.m if self.m else self.block
        if col % span:
            return
        width = min(span, w_rest.shape[1])
        score = w_rest[:, :width].pow(2) / hinv_diag[:width].pow(2)[None]
        if self.m:
            self.mask[:, col:col + width] = keep_mask(score, self.n, self.m, 0)
        else:  # equal count per row in every block, so every row keeps the same total
            self.mask[:, col:col + width] = keep_mask(score, 0, 0, self.sparsity)

    def round(self, w: torch.Tensor, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.where(self.mask[:, col], w, torch.zeros_like(w))
        return q, q

    def build(self, values: torch.Tensor) -> Sparse:
        return _sparse(values, self.mask, self.n, self.m)


class SparseQuantGrid:
    """GPTQ grid for a pruned tensor whose kept values are quantized: pruned weights round to 0,
    kept weights to their group's grid (groups run over each row's kept values), so GPTQ
    compensates pruning and quantization error together (SparseGPT's joint mode)."""

    group = 0
    natural_order = True

    def __init__(self, sp: Sparse) -> None:
        from .gptq import UniformGrid
        self.sp, q = sp, sp.values
        self.mask = torch.from_numpy(sp.mask)
        self.pos = (self.mask.cumsum(1) - 1).clamp_min(0)  # index among the row's kept values
        self.inner = UniformGrid(sp.mask.shape[0], sp.k, q.bits, q.group, q.symmetric,  # type: ignore[attr-defined]
                                 "float" if q.mins is not None else "int", q)  # type: ignore[attr-defined]
        self.rows = torch.arange(sp.mask.shape[0])

    def round(self, w: torch.Tensor, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        gi = self.pos[:, col] // self.inner.g
        s, off = self.inner.scale[self.rows, gi], self.inner.offset[self.rows, gi]
        codes = torch.clamp(torch.round((w + off) / s), 0, (1 << self.inner.bits) - 1)
        keep = self.mask[:, col]
        return torch.where(keep, codes * s - off, torch.zeros_like(w)), codes

    def build(self, codes: torch.Tensor) -> Sparse:
        kept = codes[self.mask].reshape(self.mask.shape[0], -1)
        return Sparse(self.sp.mask, self.inner.build(kept), self.sp.n, self.sp.m)


def _sparse(w: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> Sparse:
    kept = w[mask].reshape(w.shape[0], -1).half()
    return Sparse(mask.numpy(), Dense(tuple(kept.shape), "f16", data=kept), n, m)


@register_pass
class NMPass(Pass):
    yields = "sparse"
    name = "nm"
    help = "N:M structured or unstructured pruning by magnitude, Wanda or SparseGPT (OBS update)"
    params = (
        Param("n", int, 2, "weights kept per group of m", check=lambda n: 1 <= n <= 7),
        Param("m", int, 4, "group size along the input dim (0 = unstructured, see sparsity=)", check=lambda m: 0 <= m <= 8),
        Param("sparsity", float, 0.5, "fraction pruned per row when m=0", check=lambda s: 0 <= s < 1),
        Param("method", str, "wanda", "mask criterion", choices=("magnitude", "wanda", "sparsegpt")),
        Param("damp", float, 0.01, "SparseGPT dampening (fraction of mean Hessian diagonal)", check=lambda d: d > 0),
        Param("block", int, 128, "SparseGPT columns per block (and per unstructured mask choice)", check=lambda b: b >= 1),
    )
    provides = frozenset({"sparse"})

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        a = self.args_for(node)
        if a["m"] and not a["n"] < a["m"]:
            raise PassError(f"N:M = {a['n']}:{a['m']} keeps everything", hint="choose n < m (2:4, 4:8)")
        if node.rep.kind != "dense" or len(node.shape) != 2 or (a["m"] and node.shape[1] % a["m"]):
            stats.notes.append(f"{node.name}: {node.rep.describe()} {list(node.shape)} cannot be pruned, left as is")
            return
        cal = self.ctx.calib
        if a["method"] != "magnitude" and (cal is None or not cal.has(node.name)):
            raise PassError(f"method={a['method']} needs calibration statistics", tensor=node.name,
                            hint="put calibrate before nm, or use method=magnitude")
        w = self.ctx.original(node)
        n, m = (a["n"], a["m"]) if a["m"] else (0, 0)
        if a["method"] == "sparsegpt":
            pruner = Pruner(*node.shape, n, m, a["sparsity"], a["block"] - a["block"] % max(m, 1) or max(m, 1))
            values = gptq(w, cal.H(node.name), pruner, a["damp"], pruner.block)  # type: ignore[union-attr, arg-type]
            node.rep = pruner.build(values)
        else:
            score = w.abs() * (cal.input_norm(node.name)[None] if a["method"] == "wanda" else 1)  # type: ignore[union-attr]
            node.rep = _sparse(w, keep_mask(score, n, m, a["sparsity"]), n, m)
        stats.tensors.append(measure(node, w, self.ctx))
