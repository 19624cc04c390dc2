"""The training loop: compression-aware fine-tuning with online distillation, resumable.

Each step draws its batch windows and every layer's bit-width from (seed, step) alone, so a run
resumed from a checkpoint takes exactly the steps an uninterrupted run takes. Loss =
ce_weight * next-token CE + kd_weight * KL(teacher || student) + rate_lambda * rate (bits per
weight, the rans code length surrogate) + SR-STE decay. Checkpoints hold tensors and numbers only
(`torch.load(weights_only=True)` reads them) and are written atomically.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..atomic import atomic_path, write_bytes
from ..errors import TrainError
from ..eval_guard import refuse_eval_text
from ..loading import file_sha256
from ..safeio import read_bytes, regular_file
from .qat import kd_loss, model_rate_bits, penalties, prepare, step_bits
from .recipe import TrainConfig

def text_files(data: tuple[str, ...]) -> list[Path]:
    if not data:
        from importlib import resources
        return [Path(str(resources.files("cllm_compiler").joinpath("data/calib/moby-dick.txt")))]
    files: list[Path] = []
    for d in data:
        p = Path(d)
        files += sorted(p.glob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise TrainError(f"training data {data} holds no .txt file", hint="give text files or folders of .txt files under data:")
    return [regular_file(f, what=f"training data {f}", error=TrainError) for f in files]


def token_splits(tok: Any, files: list[Path], holdout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids, held-out ids): the last `holdout` of every file is held out."""
    train, held = [], []
    for f in files:
        text = read_bytes(f, 4 << 30, what=f"training data {f}", error=TrainError).decode("utf-8", errors="replace")
        refuse_eval_text(text, str(f), TrainError)
        cut = int(len(text) * (1 - holdout))
        train.append(torch.tensor(tok.encode(text[:cut]).ids))
        held.append(torch.tensor(tok.encode(text[cut:]).ids))
    return torch.cat(train), torch.cat(held)


def batch_at(ids: torch.Tensor, step: int, cfg: TrainConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    if ids.numel() <= cfg.seq_len + 1:
        raise TrainError(f"only {ids.numel()} training tokens for seq_len {cfg.seq_len}", hint="add data:")
    starts = torch.randint(0, ids.numel() - cfg.seq_len - 1, (cfg.batch,), generator=g)
    return torch.stack([ids[s:s + cfg.seq_len + 1] for s in starts.tolist()])


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def verify_checkpoint(out: Path) -> None:
    """TrainError unless OUT/checkpoint.pt is a regular file whose sha256 checkpoint.sha256 lists
    (a bit flipped on disk must not resume silently)."""
    ckpt, digest = out / "checkpoint.pt", out / "checkpoint.sha256"
    regular_file(ckpt, what=str(ckpt), error=TrainError)
    if not digest.exists():
        raise TrainError(f"{ckpt} has no checkpoint.sha256 beside it, so it cannot be verified",
                         hint="train again into a fresh --out folder (checkpoints carry their hash since cllm 0.1)")
    known = read_bytes(digest, 4096, what=str(digest), error=TrainError).decode(errors="replace").split()
    if file_sha256(ckpt) not in known:
        raise TrainError(f"{ckpt} does not match the hash recorded beside it: the file is damaged",
                         hint="train again into a fresh --out folder (or restore the checkpoint from a copy)")


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, on_log: Callable[[dict], None] = lambda r: None) -> None:
        from ..backends.torch_ref import build_torch_model
        from ..default_model import default_model_path
        from ..loading import load_model
        self.cfg, self.out, self.on_log = cfg, Path(out), on_log
        self.source = Path(default_model_path() if cfg.model == "default" else cfg.model)
        ir = load_model(self.source)
        if ir.tokenizer is None:
            raise TrainError(f"{self.source} has no tokenizer", hint="train from a folder with tokenizer.json or a GGUF")
        self.tok = ir.tokenizer.load()
        self.train_ids, self.held_ids = token_splits(self.tok, text_files(cfg.data), cfg.holdout)
        torch.manual_seed(cfg.seed)
        self.model = build_torch_model(ir).to(cfg.device).train()
        self.teacher = None
        if cfg.qat.kd_weight:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.quantizers = prepare(self.model, cfg.qat)
        scales = [p for n, p in self.model.named_parameters() if ".log_scales." in n]
        others = [p for n, p in self.model.named_parameters() if ".log_scales." not in n]
        self.opt = torch.optim.AdamW([{"params": others, "lr": cfg.lr},
                                      {"params": scales, "lr": cfg.scale_lr, "weight_decay": 0.0}])
        self.step = 0

    @property
    def ckpt(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def ckpt_hash(self) -> Path:
        return self.out / "checkpoint.sha256"

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "model": self.model.state_dict(), "optim": self.opt.state_dict(),
                 "recipe": json.dumps(self.cfg.to_dict(), sort_keys=True, default=list)}
        with atomic_path(self.ckpt) as tmp:
            torch.save(state, tmp)
            # The hash file lists the new checkpoint's hash and the one it replaces, and is written
            # before the checkpoint appears: a kill between the two leaves a pair that verifies.
            old = self.ckpt_hash.read_text().split()[:1] if self.ckpt_hash.is_file() else []
            write_bytes(self.ckpt_hash, "\n".join([file_sha256(tmp), *old]).encode() + b"\n")

    def resume(self, verified: bool = False) -> None:
        """Continue from OUT/checkpoint.pt; `verified`: the caller already checked its hash."""
        if not verified:
            verify_checkpoint(self.out)
        try:
            state = torch.load(self.ckpt, map_location=self.cfg.device, weights_only=True)
            recipe = state["recipe"]
        except Exception as e:  # torch raises many types for a file that is not its checkpoint
            raise TrainError(f"{self.ckpt} is not a training checkpoint torch can read "
                             f"({type(e).__name__}: {str(e)[:120] or 'no detail'})",
                             hint="train again into a fresh --out folder") from None
        if recipe != json.dumps(self.cfg.to_dict(), sort_keys=True, default=list):
            raise TrainError(f"{self.ckpt} was written by a different recipe",
                             hint="resume with the same recipe, or train into another --out folder")
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.step = int(state["step"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise TrainError(f"{self.ckpt} does not fit this model: {str(e)[:120]}",
                             hint="resume with the recipe and model that wrote it") from None

    def loss(self, x: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        q = self.cfg.qat
        inp, tgt = x[:, :-1].to(self.cfg.device), x[:, 1:].to(self.cfg.device)
        logits = self.model(inp).logits
        parts = {"ce": F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())}
        if self.teacher is not None:
            with torch.no_grad():
                t = self.teacher(inp).logits
            parts["kd"] = kd_loss(logits, t, q.kd_temperature)
        gen = torch.Generator(device=self.cfg.device).manual_seed(self.cfg.seed * 104_729 + step)  # resumable
        parts |= penalties(self.model, self.quantizers, q, generator=gen)
        parts["loss"] = (q.ce_weight * parts["ce"] + q.kd_weight * parts.get("kd", 0.0)
                         + q.rate_lambda * parts["rate_bits_per_weight"] + parts["sr_ste"] + parts["commitment"])
        if not q.kd_weight and not q.ce_weight:
            parts["loss"] = parts["loss"] + parts["ce"]
        return parts

    def train(self, until: int | None = None) -> dict[str, Any]:
        cfg, t0, tokens = self.cfg, time.perf_counter(), 0
        last: dict[str, Any] = {}
        while self.step < min(until or cfg.steps, cfg.steps):
            step_bits(self.quantizers, random.Random(cfg.seed * 7919 + self.step))
            for grp, base in zip(self.opt.param_groups, (cfg.lr, cfg.scale_lr)):
                grp["lr"] = base * lr_at(self.step, cfg)
            parts = self.loss(batch_at(self.train_ids, self.step, cfg), self.step)
            if not torch.isfinite(parts["loss"]):
                raise TrainError(f"the loss is {float(parts['loss'])} at step {self.step + 1}",
                                 hint="lower lr / scale_lr or rate_lambda; --resume restarts from the last checkpoint")
            self.opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            self.opt.step()
            self.step += 1
            tokens += cfg.batch * cfg.seq_len
            last = {k: round(float(v.detach()) if torch.is_tensor(v) else v, 5) for k, v in parts.items()}
            last["step"] = self.step
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                last["tokens_per_s"] = round(tokens / (time.perf_counter() - t0), 1)
                self.on_log(last)
            if self.step % cfg.ckpt_every == 0:
                self.save()
        return last

    @torch.no_grad()
    def evaluate(self, bits: int) -> dict[str, float]:
        """Held-out next-token loss/PPL of the fake-quantized model at one bit-width for every layer."""
        step_bits(self.quantizers, random.Random(0), fixed=bits)
        self.model.eval()
        n = self.cfg.seq_len
        wins = [self.held_ids[i:i + n + 1] for i in range(0, self.held_ids.numel() - n - 1, n)][: self.cfg.eval_batches]
        if not wins:
            raise TrainError("held-out text is shorter than one window", hint="lower seq_len or add data")
        nll = [F.cross_entropy(self.model(w[None, :-1].to(self.cfg.device)).logits[0].float(),
                               w[1:].to(self.cfg.device)).item() for w in wins]
        self.model.train()
        rate = model_rate_bits(self.model, self.quantizers)
        nweights = sum(wq.rows * wq.cols for wq in self.quantizers.values())
        mean = sum(nll) / len(nll)
        return {"bits": bits, "heldout_nll": round(mean, 5), "heldout_ppl": round(math.exp(mean), 4),
                "code_bits_per_weight": round(rate / nweights, 4), "windows": len(wins)}
