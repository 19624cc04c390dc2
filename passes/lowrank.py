"""`lowrank`: truncated SVD per linear, activation-aware, and low-rank correction of residuals.

mode=svd replaces a dense weight by U V. mode=correct keeps the tensor's current (quantized,
sparse, codebook) representation and adds U V fitted to the residual W - Q(W) (LQER/QERA).
With calibration statistics the SVD is whitened as in SVD-LLM: with H = X^T X = S S^T, the
SVD of (W - base) S truncated to rank r minimises the layer's *output* error ||(W - W') X^T||,
not the weight error. Rank: rank=, or the smallest reaching energy= of the (whitened)
spectrum, or the largest fitting bpw= extra bits per weight.
"""
from __future__ import annotations

import math

import torch

from ..errors import PassError
from ..ir import TensorNode
from ..passes_base import Param, Pass, PassStats, measure, register_pass
from ..reprs import DTYPES
from ..reprs_lowrank import LowRank


def whitened_svd(r: torch.Tensor, H: torch.Tensor | None, damp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, sigma, Vt) of r S, with Vt mapped back through S^-1 so that r ~ U diag(sigma) Vt."""
    r64 = r.to(torch.float64)
    if H is None:
        return torch.linalg.svd(r64, full_matrices=False)
    H = H.to(torch.float64).clone()
    H.diagonal().add_(damp * H.diagonal().mean().clamp_min(1e-12))
    try:
        S = torch.linalg.cholesky(H)
    except torch.linalg.LinAlgError:
        raise PassError("calibration Hessian is not positive definite", hint="raise damp=") from None
    U, sig, Vt = torch.linalg.svd(r64 @ S, full_matrices=False)
    Vt = torch.linalg.solve_triangular(S.T, Vt.T, upper=True).T  # Vt S^-1
    return U, sig, Vt


def choose_rank(sig: torch.Tensor, shape: tuple[int, int], rank: int, energy: float, bpw: float, bits: int) -> int:
    if rank:
        return min(rank, sig.numel())
    if energy:
        e = sig.pow(2).cumsum(0) / sig.pow(2).sum().clamp_min(1e-300)
        return int(min(int((e < energy).sum()) + 1, sig.numel()))
    return max(1, min(sig.numel(), math.floor(bpw * shape[0] * shape[1] / (bits * (shape[0] + shape[1])))))


@register_pass
class LowRankPass(Pass):
    yields = "lowrank"
    name = "lowrank"
    help = "truncated (whitened) SVD, or low-rank correction of the quantization residual"
    params = (
        Param("mode", str, "correct", "svd: W ~ U V; correct: W ~ Q(W) + U V", choices=("svd", "correct")),
        Param("rank", int, 0, "rank (0: choose by energy= or bpw=)", check=lambda r: r >= 0),
        Param("energy", float, 0.0, "keep the smallest rank holding this fraction of spectrum energy",
              check=lambda e: 0 <= e <= 1),
        Param("bpw", float, 0.0, "extra bits per weight the factors may use", check=lambda b: b >= 0),
        Param("whiten", bool, True, "whiten by the calibration Hessian (SVD-LLM) when calibrated"),
        Param("damp", float, 0.01, "Hessian dampening for whitening", check=lambda d: d > 0),
        Param("dtype", str, "f16", "factor storage", choices=("f16", "f32")),
    )
    provides = frozenset({"lowrank"})

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        a = self.args_for(node)
        if not (a["rank"] or a["energy"] or a["bpw"]):
            raise PassError("lowrank needs rank=, energy= or bpw=", tensor=node.name, hint="e.g. lowrank{rank=32}")
        if len(node.shape) != 2:
            return
        dense = node.rep.kind == "dense"
        if (a["mode"] == "svd") != dense:
            stats.notes.append(f"{node.name}: mode={a['mode']} does not apply to {node.rep.describe()}, left as is")
            return
        w = self.ctx.original(node)
        base = None if dense else node.rep
        resid = w if base is None else w - base.decode()
        cal = self.ctx.calib
        H = cal.H(node.name) if a["whiten"] and cal is not None and cal.has(node.name) else None
        U, sig, Vt = whitened_svd(resid, H, a["damp"])
        r = choose_rank(sig, node.shape, a["rank"], a["energy"], a["bpw"], DTYPES[a["dtype"]][1])  # type: ignore[arg-type]
        root = sig[:r].sqrt()
        node.rep = LowRank((U[:, :r] * root).float(), (root[:, None] * Vt[:r]).float(), base, a["dtype"])
        stats.tensors.append(measure(node, w, self.ctx))
