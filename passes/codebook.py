"""`codebook`: learned non-uniform quantization by sensitivity-weighted k-means.

d=1, scope=row: one 2^b-entry LUT per output row, k-means weighted by the Hessian diagonal
(SqueezeLLM). scope=tensor: weights are divided by a per-group absmax scale and one codebook
per tensor is learned on the normalised values. d>1: d-dimensional vector codebooks along the
input dimension, with `stages` additive residual codebooks (in the spirit of AQLM/PQ), so
bits/weight = kbits * stages / d can be fractional (bits=2.5 with d=2 -> 32-entry codebook).
Without calibration the weighting is uniform. The LUTs' bytes are part of the tensor's record.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import PassError
from ..ir import Model, TensorNode
from ..passes_base import Param, Pass, PassStats, measure, register_pass
from ..reprs_codebook import Codebook

_CHUNK = 1 << 22  # distance-matrix elements per step


def kmeans(x: torch.Tensor, w: torch.Tensor, k: int, iters: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means of points x [N, d] with per-coordinate weights w [N, d] -> (centroids, assignment)."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    c = x[torch.randperm(n, generator=g)[:k]].clone() if n >= k else torch.cat([x, x[:1].expand(k - n, -1)])
    if x.shape[1] == 1:  # scalar: start from weighted quantiles, far better than random points
        c = torch.quantile(x[:, 0], (torch.arange(k) + 0.5) / k)[:, None] if n <= 1 << 24 else c
    for _ in range(iters):
        a = assign(x, w, c)
        num = torch.zeros_like(c).index_add_(0, a, w * x)
        den = torch.zeros_like(c).index_add_(0, a, w)
        c = torch.where(den > 0, num / den.clamp_min(1e-30), c)
    return c, assign(x, w, c)


def assign(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest centroid under the weighted distance sum_j w_j (x_j - c_j)^2."""
    out = torch.empty(x.shape[0], dtype=torch.long)
    step = max(1, _CHUNK // c.shape[0])
    c2 = (c * c).T
    for s in range(0, x.shape[0], step):
        xs, ws = x[s:s + step], w[s:s + step]
        dist = ws @ c2 - 2 * (ws * xs) @ c.T
        out[s:s + step] = dist.argmin(1)
    return out


def kmeans_rows(x: torch.Tensor, wcol: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent scalar k-means per row of x [R, n], weights per column wcol [n] -> ([R, k], [R, n])."""
    c = torch.quantile(x, (torch.arange(k) + 0.5) / k, dim=1).T.contiguous()
    wx = wcol[None] * x
    for _ in range(iters):
        a = nearest_rows(x, c)
        num = torch.zeros_like(c).scatter_add_(1, a, wx)
        den = torch.zeros_like(c).scatter_add_(1, a, wcol[None].expand_as(x))
        c = torch.where(den > 0, num / den.clamp_min(1e-30), c)
    return c, nearest_rows(x, c)


def nearest_rows(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.long)
    step = max(1, _CHUNK // (x.shape[1] * c.shape[1]))
    for s in range(0, x.shape[0], step):
        out[s:s + step] = (x[s:s + step, :, None] - c[s:s + step, None, :]).abs().argmin(-1)
    return out


def fit(w: torch.Tensor, hdiag: torch.Tensor, kbits: int, d: int, stages: int, scope: str, group: int,
        iters: int, luts: list[torch.Tensor] | None = None) -> Codebook:
    """Fit (or, given `luts`, only assign to) the codebooks of one tensor."""
    rows, cols = w.shape
    k = 1 << kbits
    if scope == "row":
        c, a = kmeans_rows(w, hdiag, k, iters)
        c = c.half().float()
        a = nearest_rows(w, c)
        return Codebook(a[None].to(torch.uint8).numpy(), c[None, :, :, None].numpy(), None, 0)
    x, wt, scale, g = normalise(w, hdiag, group, d)
    luts = luts or learn(x, wt, k, stages, iters)
    codes, resid = [], x
    for c in luts:
        a = assign(resid, wt, c)
        resid = resid - c[a]
        codes.append(a.view(rows, cols // d))
    return Codebook(torch.stack(codes).to(torch.uint8).numpy(), torch.stack(luts)[:, None].numpy(), scale.numpy(), g)


def normalise(w: torch.Tensor, hdiag: torch.Tensor, group: int, d: int) -> tuple[torch.Tensor, ...]:
    """Per-group absmax scaling -> (vectors [N, d], their weights, fp16 scales, group)."""
    rows, cols = w.shape
    g = group or cols
    ng = -(-cols // g)
    scale = torch.nn.functional.pad(w.abs(), (0, ng * g - cols)).view(rows, ng, g).amax(-1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale).half().float()
    s_full = scale.repeat_interleave(g, 1)[:, :cols]
    wt = (hdiag[None] * s_full.pow(2)).reshape(-1, d)  # error in w-space = s^2 x error in x-space
    return (w / s_full).reshape(-1, d), wt, scale, g


def learn(x: torch.Tensor, wt: torch.Tensor, k: int, stages: int, iters: int) -> list[torch.Tensor]:
    """`stages` residual codebooks (fp16-exact values) for vectors x with weights wt."""
    luts, resid = [], x
    for st in range(stages):
        c, _ = kmeans(resid, wt, k, iters, seed=st)
        c = c.half().float()
        resid = resid - c[assign(resid, wt, c)]
        luts.append(c)
    return luts


class CodebookGrid:
    """A scalar codebook as a GPTQ grid: round each column to the nearest (scaled) entry."""

    group = 0

    def __init__(self, cb: Codebook) -> None:
        self.cb = cb
        self.lut = torch.from_numpy(cb.luts[0, :, :, 0].astype(np.float32))  # [nlut, K]
        self.scales = None if cb.scales is None else torch.from_numpy(cb.scales.astype(np.float32))

    def round(self, w: torch.Tensor, col: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scales[:, col // self.cb.group] if self.scales is not None else torch.ones_like(w)
        codes = (w[:, None] / s[:, None] - self.lut).abs().argmin(1)
        vals = self.lut[0][codes] if self.lut.shape[0] == 1 else self.lut.gather(1, codes[:, None])[:, 0]
        return vals * s, codes.to(torch.float32)

    def build(self, codes: torch.Tensor) -> Codebook:
        return Codebook(codes[None].to(torch.uint8).numpy(), self.cb.luts, self.cb.scales, self.cb.group)


@register_pass
class CodebookPass(Pass):
    yields = "codebook"

    def storage_format(self) -> str | None:
        return "codebook" if self.args["d"] == 1 and self.args["stages"] == 1 else "vq"
    name = "codebook"
    help = "learned codebooks: per-row scalar LUTs (SqueezeLLM) or per-tensor scalar/vector codebooks (VQ)"
    params = (
        Param("bits", float, 3.0, "bits per weight (kbits * stages / d; fractional with d > 1)", check=lambda b: 0 < b <= 8),
        Param("d", int, 1, "vector dimension (1 = scalar)", choices=(1, 2, 4, 8)),
        Param("stages", int, 1, "additive residual codebooks", check=lambda s: 1 <= s <= 4),
        Param("scope", str, "row", "row: LUT per output row (d=1 only); tensor: one codebook + group scales",
              choices=("row", "tensor")),
        Param("group", int, 128, "columns per scale when scope=tensor (0 = one scale per row)", check=lambda g: g >= 0),
        Param("iters", int, 20, "k-means iterations", check=lambda n: n >= 1),
        Param("weighted", bool, True, "weight k-means by the Hessian diagonal when calibrated"),
        Param("share", str, "none", "one codebook per tensor, or shared by every tensor of a role (all q_proj...) or all",
              choices=("none", "role", "all")),
        Param("sample", int, 1 << 18, "vectors sampled per shared codebook fit", check=lambda n: n >= 256),
    )
    provides = frozenset({"quantized"})

    @property
    def local(self) -> bool:
        return self.args["share"] == "none"  # a shared codebook is fitted on several tensors first

    def run(self, model: Model) -> PassStats:
        if self.local:
            return super().run(model)
        if self.args["scope"] != "tensor":
            raise PassError("shared codebooks need scope=tensor", hint="per-row LUTs cannot be shared")
        groups: dict[str, list[TensorNode]] = {}
        for node in model:
            if self.matches(node) and node.rep.kind == "dense" and len(node.shape) == 2:
                groups.setdefault(node.role if self.args["share"] == "role" else "all", []).append(node)
        self.shared: dict[str, list[torch.Tensor]] = {}
        for key, nodes in groups.items():
            self.shared[key] = self._fit_shared(nodes)
        stats = PassStats(self.spec())
        for node in self.each(model):
            self.apply(node, stats)
        stats.notes.append(f"{len(groups)} shared codebook(s): " + ", ".join(f"{k} ({len(v)} tensors)" for k, v in groups.items()))
        return stats

    def _fit_shared(self, nodes: list[TensorNode]) -> list[torch.Tensor]:
        a = self.args
        kbits = round(a["bits"] * a["d"] / a["stages"])
        per = max(1, a["sample"] // len(nodes))
        xs, ws = [], []
        for node in nodes:  # an even, deterministic subsample of every tensor's vectors
            x, wt, _, _ = normalise(self.ctx.original(node), self._hdiag(node), a["group"], a["d"])
            idx = torch.linspace(0, x.shape[0] - 1, min(per, x.shape[0])).long()
            xs.append(x[idx])
            ws.append(wt[idx])
        return learn(torch.cat(xs), torch.cat(ws), 1 << kbits, a["stages"], a["iters"])

    def _hdiag(self, node: TensorNode) -> torch.Tensor:
        cal = self.ctx.calib
        h = (cal.input_energy(node.name) if self.args["weighted"] and cal is not None and cal.has(node.name)
             else torch.ones(node.shape[1]))
        return h / h.mean().clamp_min(1e-30)

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        a = self.args_for(node)
        kbits = round(a["bits"] * a["d"] / a["stages"])
        if not 1 <= kbits <= 8:
            raise PassError(f"bits={a['bits']} with d={a['d']}, stages={a['stages']} needs {kbits}-bit indices",
                            tensor=node.name, hint="indices are 1-8 bits: raise stages= or lower d=")
        if abs(kbits * a["stages"] / a["d"] - a["bits"]) > 1e-9:
            raise PassError(f"bits={a['bits']} is not reachable with d={a['d']}, stages={a['stages']}",
                            tensor=node.name, hint=f"bits/weight = kbits * stages / d, e.g. {kbits * a['stages'] / a['d']:g}")
        if a["scope"] == "row" and (a["d"] > 1 or a["stages"] > 1):
            raise PassError("per-row codebooks are scalar and single-stage", tensor=node.name,
                            hint="use scope=tensor for d > 1 or stages > 1")
        if node.rep.kind != "dense" or len(node.shape) != 2 or node.shape[1] % a["d"]:
            stats.notes.append(f"{node.name}: {node.rep.describe()} {list(node.shape)} not codebook-able, left as is")
            return
        if a["scope"] == "tensor" and a["group"] % a["d"]:
            raise PassError(f"group={a['group']} is not a multiple of d={a['d']}", tensor=node.name)
        w = self.ctx.original(node)
        shared = None if self.local else self.shared[node.role if a["share"] == "role" else "all"]
        node.rep = fit(w, self._hdiag(node), kbits, a["d"], a["stages"], a["scope"], a["group"], a["iters"], shared)
        stats.tensors.append(measure(node, w, self.ctx))
