"""How much the model's loss cares about each output channel of each matched tensor: the mean
squared gradient of the next-token loss with respect to that channel (a diagonal Fisher / second-
order estimate, as HAWQ and SqueezeLLM use). With it, a tensor's output error
sum_t ||delta x_t||^2 per channel becomes an estimate of the loss it adds,
0.5 * sum_c f_c (delta H delta^T)_cc, in the same units for every tensor: the plain output error
adds the errors of a 576-wide projection and of the 49,152 logits as if they were alike.

The float model (the source weights) runs forward and backward on calibration windows; only
activations carry gradients (the weights do not), so memory is one model plus one window's
activations.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..ir import Model


def output_fisher(model: Model, weights: Callable[[str], torch.Tensor], windows: torch.Tensor,
                  names: set[str], progress: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """{tensor name: mean over tokens of (d loss / d output channel)^2} for the linears (and the
    head) among `names`; the loss is the summed next-token cross-entropy of each window."""
    from ..backends.torch_ref import build_torch_model
    net = build_torch_model(model, weights)
    net.requires_grad_(False)
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for mod_name, mod in net.named_modules():
        name = f"{mod_name}.weight"
        if isinstance(mod, torch.nn.Linear) and name in names:
            handles.append(mod.register_forward_hook(_hook(name, sums)))
    embed = net.get_input_embeddings()
    tokens = 0
    try:
        for w in windows:
            ids = w[None]
            x = embed(ids).detach().requires_grad_(True)  # gradients flow through activations only
            logits = net(inputs_embeds=x).logits[0, :-1].float()
            torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").backward()
            tokens += ids.shape[1]
            if progress is not None:
                progress()
    finally:
        for h in handles:
            h.remove()
    return {k: v / max(tokens, 1) for k, v in sums.items()}


def _hook(name: str, sums: dict[str, torch.Tensor]) -> Callable:
    def forward(mod: torch.nn.Module, inp: tuple, out: torch.Tensor) -> None:
        def grad(g: torch.Tensor) -> None:
            sq = g.detach().float().pow(2).reshape(-1, g.shape[-1]).sum(0, dtype=torch.float64)
            sums[name] = sums[name] + sq if name in sums else sq
        out.register_hook(grad)
    return forward
