"""Compression-aware model: a transformers causal LM whose linear layers see their stored form.

`prepare(model, cfg)` registers a `WeightQuantizer` parametrization on every decoder linear
(q/k/v/o, gate/up/down; embeddings, norms and the head stay float), so the unchanged HF
forward trains through fake quantization. `step_bits` draws each layer's bit-width for the
next step (randomized precision), `penalties` returns the rate and SR-STE terms, `kd_loss`
the distillation term against the float teacher.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .fakecodebook import CodebookQuantizer
from .fakelowrank import LowRankQuantizer
from .fakequant import WeightQuantizer
from .rate import hard_bits, soft_bits

Quantizer = WeightQuantizer | CodebookQuantizer | LowRankQuantizer

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class QATConfig:
    bits: tuple[int, ...] = (4,)          # randomized precision draws from these (export picks one)
    group: int = 128
    sym: bool = False
    zero: str = "int"                     # int zero points (GPTQ) or float mins (llama.cpp Q4_1/Q5_1)
    nm: tuple[int, int] | None = None     # e.g. (2, 4): N:M masks by SR-STE
    nm_match: tuple[str, ...] = LINEARS   # which linears get the mask
    codebook: dict | None = None          # e.g. {bits: 4, scope: row} or {bits: 8, d: 2, scope: tensor, group: 128}
    codebook_match: tuple[str, ...] = LINEARS
    commitment: float = 1e-3              # codebooks: weight of ||w - sg(q)||^2 (per weight)
    lowrank: int = 0                      # rank of a trained U V correction beside the quantized residual
    lowrank_match: tuple[str, ...] = LINEARS
    rank_dropout: float = 0.0
    kv_bits: int | None = None            # fake-quantize the KV cache (8 or 4 bits, blocks of kv_block)
    kv_block: int = 32
    rate_lambda: float = 0.0              # weight of the code-length term (per weight, bits)
    rate_tau: float = 0.5
    sr_ste_decay: float = 2e-4
    kd_weight: float = 1.0                # 0: plain next-token loss only
    kd_temperature: float = 1.0
    ce_weight: float = 0.0
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False)


def quantized_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Decoder linears by their weight's state-dict name (model.layers.i.self_attn.q_proj.weight)."""
    return {f"{name}.weight": mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in LINEARS}


def prepare(model: nn.Module, cfg: QATConfig) -> dict[str, Quantizer]:
    out: dict[str, Quantizer] = {}
    for name, lin in quantized_linears(model).items():
        role = name.split(".")[-2]
        nm = cfg.nm if cfg.nm and role in cfg.nm_match else None
        w = lin.weight.detach()
        grid = dict(choices=cfg.bits, group=cfg.group, sym=cfg.sym, nm=nm, zero=cfg.zero)
        if cfg.codebook and role in cfg.codebook_match:
            wq: Quantizer = CodebookQuantizer(w, **cfg.codebook)
        elif cfg.lowrank and role in cfg.lowrank_match:
            wq = LowRankQuantizer(w, cfg.lowrank, grid | {"nm": None}, cfg.rank_dropout)
            with torch.no_grad():
                lin.weight.copy_(wq.residual_init(w))  # the latent weight is the residual R
        else:
            wq = WeightQuantizer(w, **grid)
        parametrize.register_parametrization(lin, "weight", wq, unsafe=True)
        out[name] = wq
    if cfg.kv_bits:
        from .kvquant import enable
        enable(model, cfg.kv_bits, cfg.kv_block)
    return out


def latent(lin: nn.Linear) -> torch.Tensor:
    return lin.parametrizations.weight.original  # type: ignore[union-attr]


def step_bits(quantizers: dict[str, Quantizer], rng: random.Random, fixed: int | None = None) -> None:
    """Each uniform layer's bit-width for the next step: `fixed`, or drawn from its choices."""
    for wq in quantizers.values():
        if not isinstance(wq, CodebookQuantizer):
            wq.bits = fixed if fixed is not None and fixed in wq.choices else rng.choice(wq.choices)


def penalties(model: nn.Module, quantizers: dict[str, Quantizer], cfg: QATConfig,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Rate (bits per weight, uniform-grid layers), SR-STE decay and codebook commitment terms."""
    lins = quantized_linears(model)
    zero = next(model.parameters()).new_zeros(())
    rate, decay, commit, n = zero, zero, zero, 0
    for name, wq in quantizers.items():
        w = latent(lins[name])
        n += w.numel()
        if isinstance(wq, CodebookQuantizer):
            commit = commit + wq.commitment(w)
            continue
        if cfg.rate_lambda:
            rate = rate + soft_bits(wq.base if isinstance(wq, LowRankQuantizer) else wq, w, cfg.rate_tau,
                                    generator=generator)
        if wq.nm and cfg.sr_ste_decay:
            decay = decay + wq.decay_term(w)
    return {"rate_bits_per_weight": rate / max(n, 1), "sr_ste": decay * cfg.sr_ste_decay,
            "commitment": commit * cfg.commitment / max(n, 1)}


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token on softened logits, times T^2 (Hinton et al.)."""
    t = temperature
    s = F.log_softmax(student.float() / t, -1).flatten(0, -2)
    p = F.log_softmax(teacher.float() / t, -1).flatten(0, -2)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


@torch.no_grad()
def model_rate_bits(model: nn.Module, quantizers: dict[str, Quantizer]) -> float:
    """Code length of every quantized layer's codes at its current bit-width (hard, as exported)."""
    lins = quantized_linears(model)
    return sum(hard_bits(wq.parts(latent(lins[name]))["codes"], wq.bits) for name, wq in quantizers.items())
