"""Block-wise compression-aware training (BRECQ, OmniQuant, EfficientQAT's Block-AP), one
transformer block at a time on two CPU cores.

A block's quantized linears start on the grid an earlier pass chose (`quant`, `gptq`), so step 0
computes exactly what the artifact would hold without training. The block then learns to
reproduce the float block's outputs (relative MSE) on cached inputs, in one of two modes:

- `codes="keep"` (default): the stored codes stay; the fp16 scales (and float mins) and the
  block's RMSNorm weights are trained — exact gradients, no estimator (as OmniQuant's learnable
  clipping and Norm-Tweaking). Measured on SmolLM2 this is what beats GPTQ's codes: the codes GPTQ
  chose are a better rounding than straight-through training finds in a CPU budget.
- `codes="learn"`: latent weights through `fakequant.WeightQuantizer` (straight-through
  estimator on the same grid, LSQ scales): codes may change. Its gradient pulls every weight
  toward round-to-nearest of the float weight (the continuous optimum), which undoes GPTQ's error
  compensation: from GPTQ's start it made a layer's error worse on every setting tried.

What comes out is read back as `Quantized` records whose decode equals the trained forward bit
for bit. If the trained block is not better on held-out sequences, the starting block is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..passes.quant import _grouped
from ..reprs import Quantized
from .fakequant import WeightQuantizer, f16_ste


@dataclass(frozen=True)
class BlockConfig:
    steps: int = 60           # optimizer steps per block (200 measured worse end to end: bench/README.md)
    batch: int = 2            # sequences per step
    lr: float = 2e-5          # latent weights (codes="learn"; Adam)
    lr_scale: float = 3e-3    # log-scales and float mins (Adam)
    lr_norm: float = 3e-4     # RMSNorm weights (Adam); 0: norms stay
    codes: str = "keep"       # keep: stored codes fixed; learn: straight-through latent weights
    holdout: int = 2          # sequences kept out of training, to judge trained vs starting block
    seed: int = 0


@dataclass(frozen=True)
class BlockResult:
    loss_before: float        # held-out relative MSE of the starting block
    loss_after: float         # held-out relative MSE of what is kept
    trained: bool             # False: training did not help, the starting block is kept
    tensors: int
    loss_trained: float = float("nan")  # held-out relative MSE of the trained block, kept or not


class FrozenCodes(nn.Module):
    """Parametrization that ignores the latent: `rep`'s codes with learned fp16 scales (and mins),
    decoded with the float32 operations of `Quantized.decode`. Codes stay uint8 and the decode is
    recomputed in the backward pass (checkpointed), so a whole model's worth of them costs a
    quarter of its float weights, not twice them (measured: end-to-end distillation's peak RSS)."""

    def __init__(self, rep: Quantized) -> None:
        super().__init__()
        self.rep, self.cols = rep, rep.codes.shape[1]
        grouped = _grouped(torch.from_numpy(rep.codes).float(), rep.group)[0]
        self.register_buffer("codes", grouped.to(torch.uint8))
        self.log_scale = nn.Parameter(torch.from_numpy(rep.scales.astype(np.float32)).log())
        self.mins = None if rep.mins is None else nn.Parameter(torch.from_numpy(rep.mins.astype(np.float32)))
        zero = torch.from_numpy(rep.zeros.astype(np.float32)) if rep.zeros is not None else \
            torch.full(rep.scales.shape, float(1 << (rep.bits - 1)))
        self.register_buffer("zero", zero)

    def forward(self, _latent: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._decode(self.log_scale, self.mins)
        return checkpoint(self._decode, self.log_scale, self.mins, use_reentrant=False)

    def _decode(self, log_scale: torch.Tensor, mins: torch.Tensor | None) -> torch.Tensor:
        s = f16_ste(torch.exp(log_scale))[..., None]
        codes = self.codes.float()
        if mins is not None:
            w = codes * s + f16_ste(mins)[..., None]
        else:
            w = (codes - self.zero[..., None]) * s
        return w.reshape(w.shape[0], -1)[:, :self.cols]

    @torch.no_grad()
    def record(self) -> Quantized:
        r = self.rep
        mins = None if self.mins is None else self.mins.half().numpy()
        return Quantized(r.codes, torch.exp(self.log_scale).half().numpy(), r.zeros, r.bits, r.group, mins)


def quantizer_for(rep: Quantized) -> WeightQuantizer:
    """A WeightQuantizer on exactly `rep`'s grid (its fp16 scales, zero points or mins)."""
    sym = rep.symmetric
    wq = WeightQuantizer(rep.decode(), choices=(rep.bits,), group=rep.group, sym=sym,
                         zero="float" if rep.mins is not None else "int")
    b = str(rep.bits)
    with torch.no_grad():
        wq.log_scales[b].copy_(torch.from_numpy(rep.scales.astype(np.float32)).log())
        if rep.mins is not None:
            wq.mins[b].copy_(torch.from_numpy(rep.mins.astype(np.float32)))
        elif not sym:
            getattr(wq, f"zero{b}").copy_(torch.from_numpy(rep.zeros.astype(np.float32)))
    return wq


@torch.no_grad()
def to_quantized(wq: WeightQuantizer, latent: torch.Tensor) -> Quantized:
    """The record export would write for this quantizer: decodes to wq(latent) exactly."""
    parts = wq.parts(latent)
    codes = parts["codes"].to(torch.uint8).numpy()
    scales = parts["scales"].half().numpy()
    if wq.zero == "float":
        return Quantized(codes, scales, None, wq.bits, wq.group, parts["mins"].half().numpy())
    zeros = None if wq.zero == "sym" else parts["zeros"].to(torch.uint8).numpy()
    return Quantized(codes, scales, zeros, wq.bits, wq.group)


def start_latent(rep: Quantized, w: torch.Tensor, reach: float = 0.45) -> torch.Tensor:
    """Latent weights that round to `rep`'s codes yet keep where the float weight `w` lies: the
    stored weight moved toward `w` by up to `reach` of a step (mid-bin, on the grid point itself,
    neither the weight nor the scale gets a useful straight-through gradient)."""
    q = rep.decode()
    step = torch.from_numpy(rep.scales.astype(np.float32)).repeat_interleave(rep.group, dim=1)[:, :q.shape[1]]
    return q + reach * step * ((w - q) / step).clamp(-1.0, 1.0)
