"""Rate penalty: the code length of a layer's codes under the model the `rans` codec stores.

The `rans` codec (codecs/rans.py) codes a tensor's codes with one order-0 frequency table per
buffer: its size is ~ sum_i -log2 q(c_i) with q the codes' empirical frequencies, i.e. N times
the entropy of the code histogram. `hard_bits` computes exactly that from the codes export will
write (what the logs report: it matches the coder's bytes within its table overhead).

Codes are discrete, so training uses `soft_bits`: each weight's position t = w / s + zero is
spread over the grid by a Gaussian kernel of width `tau` (a soft assignment p_i(c)), the
frequency model is q = mean_i p_i, and the rate is -sum_i sum_c p_i(c) log2 q(c). It is
differentiable in the weights and the scales and tends to `hard_bits` as tau -> 0. A random
subset of weights estimates it on large layers (the estimate is scaled to the full count).
"""
from __future__ import annotations

import numpy as np
import torch

from ..codecs.rans import FrequencyTable
from .fakequant import WeightQuantizer


def hard_bits(codes: torch.Tensor, bits: int) -> float:
    """Ideal order-0 code length of the codes, as the rans codec's table models them."""
    sym = codes.detach().reshape(-1).to(torch.int64).cpu().numpy().astype(np.uint8)
    return FrequencyTable.from_symbols(sym, bits).code_length_bits(sym)


def soft_bits(wq: WeightQuantizer, w: torch.Tensor, tau: float = 0.5, sample: int = 65536,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable estimate of hard_bits for the layer's current bit-width."""
    from ..passes.quant import _grouped
    from .fakequant import nm_mask
    b = wq.bits
    x, _, _ = _grouped(wq._values(w, nm_mask(w, *wq.nm) if wq.nm else None), wq.group)
    s = wq.scale(b)
    if wq.zero == "float":
        t = ((x - wq.mins[str(b)][..., None]) / s[..., None]).reshape(-1)
    else:
        t = (x / s[..., None] + getattr(wq, f"zero{b}")[..., None]).reshape(-1)
    n = t.numel()
    if n > sample:
        t = t[torch.randint(0, n, (sample,), generator=generator, device=t.device)]
    grid = torch.arange(1 << b, device=t.device, dtype=t.dtype)
    logits = -(t.clamp(0, (1 << b) - 1)[:, None] - grid[None, :]).pow(2) / (2 * tau * tau)
    p = torch.softmax(logits, dim=-1)
    q = p.mean(0).clamp_min(1e-12)
    return -(p * torch.log2(q)[None, :]).sum() * (n / t.numel())
