"""End-to-end distillation of a compressed model's small parameters (the stage after block-wise
training): KL on logits from the float model, training only the fp16 scales and mins of the
quantized linears (their codes stay) and the RMSNorm weights, through the model's full forward.

Block-wise training matches each layer's outputs in isolation; this stage sees what the errors of
all layers do together to the next-token distribution. The teacher's distribution is taken once,
before the student exists (so memory holds one model), as its top-k log-probabilities plus the
mass of the rest: the KL between those coarsened distributions is exact and costs k numbers a
token instead of the vocabulary (sparse KD, as in the MiniLLM/ Sequence-KD line of work).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..reprs import Quantized
from .blockwise import FrozenCodes


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 1            # passes over the training sequences
    batch: int = 1             # sequences per step
    lr_scale: float = 3e-3     # log-scales and float mins (Adam, cosine decay)
    lr_norm: float = 3e-4      # RMSNorm weights (0: norms stay)
    topk: int = 64             # teacher log-probabilities kept per token (plus the rest's mass)
    holdout: int = 2           # sequences kept out, to judge trained vs starting parameters
    seed: int = 0


@dataclass(frozen=True)
class Targets:
    """The teacher's distribution on each token: top-k ids and log-probabilities."""
    idx: torch.Tensor          # [n, seqlen, k] int64
    logp: torch.Tensor         # [n, seqlen, k] float32


@torch.no_grad()
def teacher_targets(net: nn.Module, ids: torch.Tensor, topk: int,
                    progress: Callable[[], None] | None = None) -> Targets:
    idx, logp = [], []
    for row in ids:
        lp = F.log_softmax(net(row[None], use_cache=False).logits.float(), dim=-1)
        v, i = lp.topk(min(topk, lp.shape[-1]), dim=-1)
        idx.append(i[0])
        logp.append(v[0])
        if progress is not None:
            progress()
    return Targets(torch.stack(idx), torch.stack(logp))


def sparse_kl(logits: torch.Tensor, t_idx: torch.Tensor, t_logp: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) on the teacher's top-k plus one 'rest' bucket."""
    ls = F.log_softmax(logits.float(), dim=-1).gather(-1, t_idx)
    pt = t_logp.exp()
    rest_t = (1 - pt.sum(-1)).clamp_min(1e-12)
    rest_s = (1 - ls.exp().sum(-1)).clamp_min(1e-12)
    kl = (pt * (t_logp - ls)).sum(-1) + rest_t * (rest_t.log() - rest_s.log())
    return kl.mean()


@torch.no_grad()
def heldout_kl(net: nn.Module, ids: torch.Tensor, t: Targets) -> float:
    return sum(float(sparse_kl(net(ids[i:i + 1], use_cache=False).logits, t.idx[i:i + 1], t.logp[i:i + 1]))
               for i in range(ids.shape[0])) / max(ids.shape[0], 1)


def attach(net: nn.Module, reps: dict[str, Quantized]) -> dict[str, FrozenCodes]:
    """Each named linear of `net` computes from its record's codes with trainable fp16 scales.
    Its float weight is dropped meanwhile (the parametrization ignores it): memory holds the
    uint8 codes instead."""
    quants = {}
    for name, rep in reps.items():
        lin = net.get_submodule(name.removesuffix(".weight"))
        lin.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        quants[name] = FrozenCodes(rep)
        parametrize.register_parametrization(lin, "weight", quants[name], unsafe=True)
    return quants


def detach(net: nn.Module, records: dict[str, Quantized]) -> None:
    """Plain linears again, holding `records` decoded (what the artifact will compute)."""
    for name, rec in records.items():
        lin = net.get_submodule(name.removesuffix(".weight"))
        parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)
        lin.weight = nn.Parameter(rec.decode(), requires_grad=False)


def optimize(net: nn.Module, quants: dict[str, FrozenCodes], norms: dict[str, nn.Parameter],
             ids: torch.Tensor, t: Targets, cfg: DistillConfig,
             progress: Callable[[], None] | None = None) -> list[float]:
    """Adam with cosine decay on the scales/mins and norms; returns the training loss per step."""
    # Layer outputs are recomputed in the backward pass: peak memory +0.2 GB instead of +0.7 GB
    # for a 135M model at 512 tokens, for ~20% more time (train mode: every dropout rate is 0)
    _checkpointing(net, True)
    net.train()
    try:
        return _steps(net, quants, norms, ids, t, cfg, progress)
    finally:
        _checkpointing(net, False)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)


def _checkpointing(net: nn.Module, on: bool) -> None:
    """transformers >= 5.2x names it activation checkpointing; earlier 5.x, gradient checkpointing."""
    kw = {"use_reentrant": False}
    if hasattr(net, "activation_checkpointing_enable"):
        net.activation_checkpointing_enable(activation_checkpointing_kwargs=kw) if on else net.activation_checkpointing_disable()
    else:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw) if on else net.gradient_checkpointing_disable()


def _steps(net: nn.Module, quants: dict[str, FrozenCodes], norms: dict[str, nn.Parameter],
           ids: torch.Tensor, t: Targets, cfg: DistillConfig, progress: Callable[[], None] | None) -> list[float]:
    for p in net.parameters():
        p.requires_grad_(False)
    groups = [{"params": [p for q in quants.values() for p in q.parameters()], "lr": cfg.lr_scale}]
    if cfg.lr_norm > 0 and norms:
        groups.append({"params": list(norms.values()), "lr": cfg.lr_norm})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = torch.optim.Adam(groups, eps=1e-14)  # tiny per-scale gradients: see blocktrain._optimize
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.cat([torch.randperm(ids.shape[0], generator=gen) for _ in range(cfg.epochs)])
    steps = max(-(-order.numel() // cfg.batch), 1)
    base = [g["lr"] for g in opt.param_groups]
    losses = []
    for step in range(steps):
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        pick = order[step * cfg.batch:(step + 1) * cfg.batch]
        loss = sparse_kl(net(ids[pick], use_cache=False).logits, t.idx[pick], t.logp[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress()
    return losses
