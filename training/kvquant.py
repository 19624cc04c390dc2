"""KV-cache fake quantization inside attention, through transformers' attention interface.

`enable(model, bits, block)` routes the model's attention through `cllm_kvq`: keys (after RoPE,
as a KV cache holds them) and values are fake-quantized per head and token in blocks of `block`
along head_dim — symmetric absmax with an fp16 scale per block, as llama.cpp's Q8_0 cache type
(`--cache-type-k q8_0`, blocks of 32) stores them; 4 bits uses the same block grid with 7 levels
each side — with a straight-through estimator, then attention runs as SDPA. Training with it
makes the model robust to the cache format it will be served with.
"""
from __future__ import annotations

import torch
from torch import nn

from .fakequant import round_ste

NAME = "cllm_kvq"


def kv_fake_quant(x: torch.Tensor, bits: int, block: int = 32) -> torch.Tensor:
    """x [..., head_dim] -> the values a `bits`-bit block-absmax cache holds (fp16 scales)."""
    hd = x.shape[-1]
    b = block if hd % block == 0 else hd
    xb = x.float().reshape(*x.shape[:-1], hd // b, b)
    qmax = (1 << (bits - 1)) - 1
    s = (xb.detach().abs().amax(-1, keepdim=True) / qmax)
    s = torch.where(s == 0, torch.ones_like(s), s).half().float()
    q = torch.clamp(round_ste(xb / s), -qmax, qmax)
    return (q * s).reshape(x.shape).to(x.dtype)


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    bits = getattr(module.config, "cllm_kv_bits", None)
    if bits:
        block = getattr(module.config, "cllm_kv_block", 32)
        key, value = kv_fake_quant(key, bits, block), kv_fake_quant(value, bits, block)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def enable(model: nn.Module, bits: int, block: int = 32) -> None:
    from transformers import AttentionInterface
    AttentionInterface.register(NAME, _attention)
    model.config.cllm_kv_bits, model.config.cllm_kv_block = bits, block
    model.set_attn_implementation(NAME)
