"""Low-rank reparameterisation W = U V + R with R on a quantization grid (LQER-style, trained).

`LowRankQuantizer` holds U [rows, r] and V [r, cols] as parameters (fp16 by STE, as the
`lowrank` representation stores them) and the residual R as the Linear's latent weight, fake-
quantized by a `WeightQuantizer`. Initialisation: the rank-r SVD of W (singular values split
evenly between U and V) and R = W - U V. Rank dropout drops whole rank components at random in
training so the correction degrades gracefully; export writes `LowRank(U, V, base=Quantized)`,
which decodes with the same float32 operations (U V + base).
"""
from __future__ import annotations

import torch
from torch import nn

from .fakequant import WeightQuantizer, f16_ste


class LowRankQuantizer(nn.Module):
    def __init__(self, w: torch.Tensor, rank: int, base_args: dict, dropout: float = 0.0) -> None:
        super().__init__()
        u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
        r = min(rank, s.numel())
        self.u = nn.Parameter(u[:, :r] * s[:r].sqrt())
        self.v = nn.Parameter(s[:r].sqrt()[:, None] * vh[:r])
        self.rank, self.dropout, self.nm, self.zero = r, dropout, None, "lowrank"
        self.base = WeightQuantizer(self.residual_init(w), **base_args)
        self.rows, self.cols = w.shape

    def residual_init(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return w.float() - f16_ste(self.u) @ f16_ste(self.v)

    @property
    def choices(self) -> tuple[int, ...]:
        return self.base.choices

    @property
    def bits(self) -> int:
        return self.base.bits

    @bits.setter
    def bits(self, b: int) -> None:
        self.base.bits = b

    def correction(self) -> torch.Tensor:
        u, v = f16_ste(self.u), f16_ste(self.v)
        if self.training and self.dropout:
            keep = (torch.rand(self.rank, device=u.device) >= self.dropout).to(u.dtype)
            u = u * keep
        return u @ v

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.correction() + self.base(r)  # LowRank.decode: U V + base

    def parts(self, r: torch.Tensor, bits: int | None = None) -> dict[str, torch.Tensor]:
        return self.base.parts(r, bits) | {"U": self.u.detach().half(), "V": self.v.detach().half()}
