"""Fake quantization with straight-through estimators, on the compiler's own grid.

`WeightQuantizer` is a `torch.nn.utils.parametrize` module: the Linear keeps a float latent
weight, and every forward sees exactly the weight that export will store, computed with the
same grouping and grid as `passes/quant.py` (`_grouped`, `_grid`: groups along the input dim, a
ragged last group padded by its last column, int zero points, fp16 scales) and decoded with the
same float32 operations as `Quantized.decode` ((code - zero) * scale), so a trained model and its
compiled artifact give the same logits bit for bit.

- Scales are learned in log space (LSQ's gradient through round by STE; log space because Adam
  steps are ~lr whatever the gradient, and a 1e-3 step on an 8-bit scale of ~1e-3 would cross
  zero) and pass through fp16 rounding with an STE, so training sees the stored fp16 value.
- Zero points are integers fixed at initialisation (GPTQ-style min/max grid).
- `bits` can change per step (randomized precision): one scale set per bit-width in `choices`.
- N:M sparsity (SR-STE): the mask is the top-n |w| of every m, recomputed each step; the forward
  sees the pruned weight, the backward passes the gradient to every latent weight (STE), and
  `decay_term` adds SR-STE's lambda/2 ||(1 - mask) * w||^2. Kept values are quantized in the
  compact [rows, kept] layout that `Sparse(mask, Quantized)` stores (groups along kept values).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..passes.quant import _grid, _grouped


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def f16_ste(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the fp16 value export stores, gradient as identity."""
    return x + (x.half().float() - x).detach()


def grad_scale(x: torch.Tensor, s: float) -> torch.Tensor:
    return (x - x * s).detach() + x * s


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| of every m consecutive inputs (ties: lowest index, as `passes/nm`)."""
    rows, cols = w.shape
    g = w.detach().abs().reshape(rows, cols // m, m)
    idx = torch.topk(g, n, dim=-1, sorted=False).indices
    return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True).reshape(rows, cols)


class WeightQuantizer(nn.Module):
    """Parametrization W_latent -> W_stored for one [rows, cols] Linear weight."""

    def __init__(self, w: torch.Tensor, choices: tuple[int, ...] = (4,), group: int = 128, sym: bool = False,
                 nm: tuple[int, int] | None = None, zero: str = "int") -> None:
        super().__init__()
        self.rows, self.cols = w.shape
        self.choices, self.sym, self.nm = tuple(choices), sym, nm
        self.zero = "sym" if sym else zero  # int: GPTQ zero points; float: llama.cpp Q4_1-style learned mins
        self.bits = max(self.choices)
        if nm is not None and self.cols % nm[1]:
            raise ValueError(f"{self.cols} inputs are not a multiple of m={nm[1]}")
        with torch.no_grad():
            vals = self._values(w.float(), nm_mask(w, *nm) if nm else None)
            self.group = min(group or vals.shape[1], vals.shape[1])
            x, _, _ = _grouped(vals, self.group)
            self.log_scales = nn.ParameterDict()
            self.mins = nn.ParameterDict()
            for b in self.choices:
                _, scale, offset = _grid(x, b, sym, "float" if self.zero == "float" else "int", None)
                self.log_scales[str(b)] = nn.Parameter(scale.log())
                if self.zero == "float":
                    self.mins[str(b)] = nn.Parameter(offset.clone())
                else:
                    self.register_buffer(f"zero{b}", offset.clone())

    def _values(self, w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return w
        return w[mask].view(self.rows, -1)  # row-major kept values, as Sparse stores them

    def _quant(self, vals: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes [rows, ng, g], scale [rows, ng] fp16-exact, offset [rows, ng]) of compact values;
        offset is the zero point, or (zero=float) the fp16 min."""
        x, _, _ = _grouped(vals, self.group)
        gs = 1.0 / math.sqrt(self.group * ((1 << bits) - 1))
        s = f16_ste(grad_scale(self.scale(bits), gs))
        qmax = (1 << bits) - 1
        if self.zero == "float":
            lo = f16_ste(grad_scale(self.mins[str(bits)], gs))
            return torch.clamp(round_ste((x - lo[..., None]) / s[..., None]), 0, qmax), s, lo
        zero = getattr(self, f"zero{bits}")
        return torch.clamp(round_ste(x / s[..., None]) + zero[..., None], 0, qmax), s, zero

    def scale(self, bits: int) -> torch.Tensor:
        return torch.exp(self.log_scales[str(bits)])

    def _dequant(self, q: torch.Tensor, s: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """The float32 operations of Quantized.decode, in its order."""
        if self.zero == "float":
            return q * s[..., None] + off[..., None]
        return (q - off[..., None]) * s[..., None]

    def parts(self, w: torch.Tensor, bits: int | None = None) -> dict[str, torch.Tensor]:
        """What export stores: mask (N:M only), codes [rows, kept], fp16 scales, int zeros."""
        b = bits or self.bits
        mask = nm_mask(w, *self.nm) if self.nm else None
        vals = self._values(w, mask)
        q, s, zero = self._quant(vals, b)
        out = {"codes": q.reshape(self.rows, -1)[:, :vals.shape[1]], "scales": s.detach(),
               ("mins" if self.zero == "float" else "zeros"): zero.detach()}
        return out | ({"mask": mask} if mask is not None else {})

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        mask = nm_mask(w, *self.nm) if self.nm else None
        vals = self._values(w, mask)
        q, s, zero = self._quant(vals, self.bits)
        deq = self._dequant(q, s, zero).reshape(self.rows, -1)[:, :vals.shape[1]]  # crop the group padding
        if mask is None:
            return deq
        out = torch.zeros_like(w).masked_scatter(mask, deq)
        return out + (w - w.detach()) * ~mask  # SR-STE: pruned weights still get their gradient

    def decay_term(self, w: torch.Tensor) -> torch.Tensor:
        """SR-STE's regulariser lambda/2 ||(1 - mask) w||^2 without lambda (0 without N:M)."""
        if not self.nm:
            return w.new_zeros(())
        return 0.5 * (w * ~nm_mask(w, *self.nm)).pow(2).sum()
