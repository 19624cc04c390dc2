"""The block training loop of `reconstruct` (formats and modes: training/blockwise.py)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..reprs import Quantized
from .blockwise import BlockConfig, BlockResult, FrozenCodes, quantizer_for, start_latent, to_quantized

Forward = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def block_loss(fwd: Forward, x: torch.Tensor, y: torch.Tensor, chunk: int = 4) -> float:
    """Squared error of fwd(x) against y over all sequences, relative to sum(y^2)."""
    err = sig = 0.0
    for s in range(0, x.shape[0], chunk):
        t = y[s:s + chunk]
        err += float((fwd(x[s:s + chunk]) - t).pow(2).sum(dtype=torch.float64))
        sig += float(t.pow(2).sum(dtype=torch.float64))
    return err / max(sig, 1e-30)


def train_block(block: nn.Module, fwd: Forward, linears: dict[str, nn.Linear], reps: dict[str, Quantized],
                floats: dict[str, torch.Tensor], norms: dict[str, torch.nn.Parameter], x: torch.Tensor,
                y: torch.Tensor, cfg: BlockConfig, progress: Callable[[int], None] | None = None
                ) -> tuple[dict[str, Quantized], dict[str, torch.Tensor], BlockResult]:
    """Train `block` (its `linears` holding `reps`; `norms`: its RMSNorm weights) so that fwd(x)
    approaches y. Returns the records and norm weights to keep (trained, or the starting ones
    unchanged) and the held-out losses. `floats`: the float weights (codes="learn" starts there)."""
    n = x.shape[0]
    hold = min(cfg.holdout, n - 1)
    xt, yt, xh, yh = x[:n - hold], y[:n - hold], x[n - hold:], y[n - hold:]
    start_norms = {k: p.detach().clone() for k, p in norms.items()}
    with torch.no_grad():
        for name, lin in linears.items():
            lin.weight.copy_(reps[name].decode())
    before = block_loss(fwd, xh, yh)
    quants: dict[str, nn.Module] = {}
    for name, lin in linears.items():
        if cfg.codes == "learn":
            quants[name] = quantizer_for(reps[name])
            with torch.no_grad():
                lin.weight.copy_(start_latent(reps[name], floats[name]))
        else:
            quants[name] = FrozenCodes(reps[name])
        parametrize.register_parametrization(lin, "weight", quants[name], unsafe=True)
    try:
        _optimize(block, fwd, linears, quants, norms, xt, yt, cfg, progress)
        after = block_loss(fwd, xh, yh)
        trained = {name: (q.record() if isinstance(q, FrozenCodes) else  # type: ignore[operator]
                          to_quantized(q, lin.parametrizations.weight.original))  # type: ignore[arg-type, union-attr]
                   for (name, lin), q in zip(linears.items(), quants.values())}
    finally:
        for lin in linears.values():
            parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)
    better = after < before
    keep, keep_norms = (trained, {k: p.detach().clone() for k, p in norms.items()}) if better else (reps, start_norms)
    with torch.no_grad():
        for name, lin in linears.items():
            lin.weight.copy_(keep[name].decode())
        for k, p in norms.items():
            p.copy_(keep_norms[k])
    return keep, keep_norms, BlockResult(before, min(after, before), better, len(linears), after)


def _optimize(block: nn.Module, fwd: Forward, linears: dict[str, nn.Linear], quants: dict[str, nn.Module],
              norms: dict[str, torch.nn.Parameter], x: torch.Tensor, y: torch.Tensor, cfg: BlockConfig,
              progress: Callable[[int], None] | None) -> None:
    for p in block.parameters():
        p.requires_grad_(False)
    groups = [{"params": [p for q in quants.values() for p in q.parameters()], "lr": cfg.lr_scale}]
    if cfg.codes == "learn":
        groups.append({"params": [lin.parametrizations.weight.original for lin in linears.values()],  # type: ignore[union-attr]
                       "lr": cfg.lr})
    if cfg.lr_norm > 0 and norms:
        groups.append({"params": list(norms.values()), "lr": cfg.lr_norm})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    # eps far below the default 1e-8: per-weight gradients of a block's relative MSE are ~1e-9, and
    # with eps 1e-8 Adam took steps 10-100x smaller than lr (the scales did not move at all)
    opt = torch.optim.Adam(groups, eps=1e-14)
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.steps):
        idx = torch.randint(0, x.shape[0], (min(cfg.batch, x.shape[0]),), generator=gen)
        t = y[idx]
        loss = (fwd(x[idx]) - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-30)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step)
    for p in block.parameters():
        p.requires_grad_(False)
