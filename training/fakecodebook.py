"""Learned codebooks with straight-through assignment, on the `codebook` pass's own format.

`CodebookQuantizer` is a parametrization like `WeightQuantizer`: initialised by the codebook
pass's own k-means (`passes/codebook.fit`: per-row scalar LUTs as SqueezeLLM, or one per-tensor
codebook of d-dim vectors over per-group absmax-normalised weights), it keeps the centroids as
parameters (fp16 by STE, as stored). Each forward assigns every weight (vector) to its nearest
centroid, returns the centroid values (decoded with the float32 operations of `Codebook.decode`),
lets the gradient reach the centroids through the gather and the latent weights by STE, and
`commitment` (VQ-VAE's ||w - sg(q)||^2) pulls weights towards their centroids.
"""
from __future__ import annotations

import torch
from torch import nn

from ..passes.codebook import assign, fit, nearest_rows
from .fakequant import f16_ste


class CodebookQuantizer(nn.Module):
    def __init__(self, w: torch.Tensor, bits: int = 4, d: int = 1, scope: str = "row", group: int = 128,
                 iters: int = 10) -> None:
        super().__init__()
        if scope not in ("row", "tensor") or (scope == "row" and d != 1):
            raise ValueError("codebooks train per row (scalar) or per tensor (scalar or vector)")
        self.rows, self.cols = w.shape
        self.kbits, self.d, self.scope = bits, d, scope
        self.choices, self.bits, self.nm, self.zero = (bits,), bits, None, "codebook"
        cb = fit(w.detach().float(), torch.ones(self.cols), bits, d, 1, scope, group if scope == "tensor" else 0, iters)
        self.lut = nn.Parameter(torch.from_numpy(cb.luts[0].astype("float32")))  # [nlut, K, d]
        self.group = cb.group if cb.scales is not None else 0
        self.register_buffer("scales", torch.from_numpy(cb.scales.astype("float32")) if cb.scales is not None
                             else torch.zeros(0))

    def _scale_full(self) -> torch.Tensor:
        return self.scales.repeat_interleave(self.group, 1)[:, :self.cols]

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid indices: [rows, cols] (row scope) or [rows, cols / d] (tensor scope)."""
        c = self.lut.detach().half().float()
        if self.scope == "row":
            return nearest_rows(w.detach(), c[:, :, 0])
        x = (w.detach() / self._scale_full()).reshape(-1, self.d)
        return assign(x, torch.ones_like(x), c[0]).view(self.rows, -1)

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        """Codebook.decode's float32 operations, on the fp16-exact centroids."""
        c = f16_ste(self.lut)
        if self.scope == "row":
            return c[torch.arange(self.rows)[:, None], a][..., 0]
        w = c[0][a].reshape(self.rows, -1)
        return w * self._scale_full() if self.group else w

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.decode(self.codes(w)) + (w - w.detach())  # STE: latent weights still learn

    def commitment(self, w: torch.Tensor) -> torch.Tensor:
        return (w - self.decode(self.codes(w)).detach()).pow(2).sum()

    def parts(self, w: torch.Tensor, bits: int | None = None) -> dict[str, torch.Tensor]:
        out = {"codes": self.codes(w), "lut": self.lut.detach().half()}
        return out | ({"scales": self.scales.half()} if self.group else {})
