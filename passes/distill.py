"""`distill`: end-to-end distillation of the stored grids' small parameters (training/distill.py).

After the formats are chosen (`quant`, `gptq`, and usually `reconstruct`), the whole compressed
model learns the float model's next-token distribution: the quantized linears' fp16 scales/mins
and the RMSNorm weights train (codes, codebooks, low-rank factors and masks stay), always on the
exact stored grid, so the artifact computes what training computed. The result is kept only if
its KL on held-out sequences is lower than the starting point's.

    calibrate,gptq{bits=3},quant{bits=8,match=embed|lm_head},reconstruct,distill,entropy
"""
from __future__ import annotations

import time

import torch

from ..backends.torch_ref import build_torch_model
from ..ir import Model
from ..passes_base import Param, PassStats, measure, register_pass
from ..reprs import Dense, Quantized
from ..training.distill import DistillConfig, attach, detach, heldout_kl, optimize, teacher_targets, Targets
from .calibrate import DATA_HELP, DEFAULT_TEXT, prepared_windows
from .trainingpass import TrainingPass, stored_norm


@register_pass
class DistillPass(TrainingPass):
    name = "distill"
    help = "end-to-end distillation: the quantized linears' fp16 scales/mins and the norms learn the float model's logits (KL)"
    params = (
        Param("tokens", int, 32768, "training + held-out tokens (about 6 s per 512 on one core for a 135M model)",
              check=lambda n: n >= 2),
        Param("seqlen", int, 512, "tokens per sequence", check=lambda n: n >= 2),
        Param("data", str, DEFAULT_TEXT, DATA_HELP),
        Param("epochs", int, 1, "passes over the training sequences", check=lambda n: n >= 1),
        Param("batch", int, 1, "sequences per step", check=lambda n: n >= 1),
        Param("lr_scale", float, 3e-3, "learning rate of the log-scales and mins (Adam, cosine decay; 1e-3 measured worse)",
              check=lambda a: 0 <= a <= 1),
        Param("lr_norm", float, 3e-4, "learning rate of the RMSNorm weights (0: norms stay)", check=lambda a: 0 <= a <= 1),
        Param("topk", int, 64, "teacher log-probabilities kept per token (the rest as one bucket)",
              check=lambda n: 1 <= n <= 4096),
        Param("holdout", int, 2, "sequences held out to judge trained vs starting parameters", check=lambda n: n >= 1),
    )
    default_match = "linear|lm_head"

    def count(self, model: Model) -> int:
        a = self.args
        n = -(-a["tokens"] // a["seqlen"])
        return n + a["epochs"] * -(-(n - a["holdout"]) // a["batch"])

    def run(self, model: Model) -> PassStats:
        stats = PassStats(self.spec())
        reps = {n.name: n.rep for n in model if self.matches(n) and isinstance(n.rep, Quantized)}
        if self.ctx.simulating or not reps:
            return stats
        a, t0 = self.args, time.perf_counter()
        ids, _ = prepared_windows(self, model)
        cfg = DistillConfig(a["epochs"], a["batch"], a["lr_scale"], a["lr_norm"], a["topk"], a["holdout"])
        tick = (lambda: self.on_tensor("distill")) if self.on_tensor else None  # type: ignore[misc]
        teacher = build_torch_model(model, lambda name: self.ctx.original(model.tensors[name]))
        targets = teacher_targets(teacher, ids, cfg.topk, tick)
        del teacher  # memory holds one model at a time
        n = ids.shape[0] - cfg.holdout
        train = Targets(targets.idx[:n], targets.logp[:n])
        hold = Targets(targets.idx[n:], targets.logp[n:])
        net = build_torch_model(model)
        norms = {k: p for k, p in net.named_parameters()
                 if k.endswith("norm.weight") and k in model.tensors and isinstance(model.tensors[k].rep, Dense)}
        before = heldout_kl(net, ids[n:], hold)
        quants = attach(net, reps)
        records = dict(reps)  # the starting records, should training fail
        try:
            losses = optimize(net, quants, norms, ids[:n], train, cfg, tick)
            records = {name: q.record() for name, q in quants.items()}
        finally:
            detach(net, records)  # what the artifact will hold, to judge it exactly
        stored = {name: stored_norm(model, name, p) for name, p in norms.items()}
        with torch.no_grad():
            for name, w in stored.items():
                norms[name].copy_(w.decode())
        after = heldout_kl(net, ids[n:], hold)
        if after < before:
            for name, rec in records.items():
                model.tensors[name].rep = rec
                stats.tensors.append(measure(model.tensors[name], self.ctx.original(model.tensors[name]), self.ctx))
            for name, rep in stored.items():
                model.tensors[name].rep = rep
        verdict = "kept" if after < before else "not better: the starting parameters are kept"
        stats.notes.append(f"held-out KL {before:.4f} -> {after:.4f} ({verdict}); {ids[:n].numel() * cfg.epochs} "
                           f"training tokens, loss {losses[0]:.4f} -> {sum(losses[-4:]) / len(losses[-4:]):.4f}, "
                           f"{time.perf_counter() - t0:.0f} s")
        return stats
