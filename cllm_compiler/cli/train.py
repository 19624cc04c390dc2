"""cllm-train: compression-aware fine-tuning, then an export `cllm-compile` reads without re-fitting.

The decoder's linear layers train through fake quantization on cllm's own grid (learned fp16
scales, straight-through rounding), optionally with N:M masks (SR-STE), a code-length penalty
(the rans codec's rate model) and distillation from the float model; each step can draw every
layer's bit-width from a set (one checkpoint, many rates). The export is a Hugging Face folder
plus compression.json / compression.safetensors.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .ui import out, progress, run_cli, setup_threads, step

EPILOG = """\
examples:
  cllm-train recipe.yaml -o runs/qat4                # train, checkpoint every ckpt_every steps, export
  cllm-train recipe.yaml -o runs/qat4 --resume       # continue from runs/qat4/checkpoint.pt
  cllm-train --steps 20 --set qat.bits=[4] -o runs/smoke   # default model, packaged book, 20 steps
  cllm-compile runs/qat4/export -p "entropy{codec=rans}"   # the trained formats, entropy coded
recipe keys (YAML): model, data, steps, batch, seq_len, lr, scale_lr, warmup, holdout, ckpt_every,
log_every, export_bits, device, seed, qat: {bits, group, sym, nm, nm_match, rate_lambda, rate_tau,
sr_ste_decay, kd_weight, kd_temperature, ce_weight}. Never train on WikiText-2 test (refused).
"""


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _parse_set(items: list[str]) -> dict:
    from ..errors import TrainError
    from ..safeio import load_yaml
    top: dict = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep:
            raise TrainError(f"--set {it!r} is not KEY=VALUE", hint="e.g. --set qat.bits=[4,3] --set steps=50")
        node = top
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TrainError(f"--set {key[:60]!r}: '{p}' was set to a value, not a section")
        node[leaf] = load_yaml(val, f"--set {key[:60]}", TrainError)
    return top


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="cllm-train", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", type=Path, help="recipe YAML (default: all defaults)")
    ap.add_argument("-o", "--out", type=Path, default=Path("train-out"), help="run folder (checkpoint, export)")
    ap.add_argument("--steps", type=int, help="override the recipe's steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--stop-at", type=int, help="stop after this step (checkpointed), to resume later")
    ap.add_argument("--force", action="store_true", help="replace an existing OUT/export")
    args = ap.parse_args(argv)
    setup_threads()
    from ..errors import TrainError
    from ..training.export import export
    from ..training.recipe import load_recipe
    from ..training.train import Trainer, verify_checkpoint
    over = _parse_set(args.set)
    qat_over = over.pop("qat", {})
    if not isinstance(qat_over, dict):
        raise TrainError("--set qat=... must set keys inside it", hint="e.g. --set qat.bits=[4,3]")
    if qat_over:  # one qat key over the recipe's qat section (checked as a whole, with the top keys)
        import dataclasses
        over["qat"] = {**_qat_dict(dataclasses.asdict(load_recipe(args.recipe).qat)), **qat_over}
    cfg = load_recipe(args.recipe, {**over, "steps": args.steps})
    if (args.out / "checkpoint.pt").exists() and not args.resume:
        raise TrainError(f"{args.out} holds a checkpoint", hint="add --resume to continue it, or pick another -o")
    if args.resume:
        verify_checkpoint(args.out)  # before the model loads: a damaged checkpoint is refused at once
    step(f"loading {cfg.model} and tokenizing {len(cfg.data) or 1} text source(s)")
    tr = Trainer(cfg, args.out, on_log=lambda r: out.print(json.dumps(r), highlight=False))
    if args.resume:
        tr.resume(verified=True)  # hashed above, before the model loaded
        step(f"resumed at step {tr.step}")
    with progress() as p:
        task = p.add_task("training", total=cfg.steps, completed=tr.step)
        tr.on_log = lambda r: (p.update(task, completed=r["step"]), out.print(json.dumps(r), highlight=False))
        tr.train(until=args.stop_at)
        p.update(task, completed=tr.step)
    tr.save()
    if tr.step < cfg.steps:
        step(f"stopped at step {tr.step}; continue with --resume")
        return 0
    for b in sorted(set(cfg.qat.bits), reverse=True):
        out.print(json.dumps(tr.evaluate(b)), highlight=False)
    bits = cfg.export_bits or max(cfg.qat.bits)
    export(tr.model, tr.quantizers, args.out / "export", bits=bits, source=tr.source if tr.source.is_dir() else None,
           force=args.force)
    step(f"exported {args.out / 'export'} at {bits} bits: cllm-compile {args.out / 'export'} -p \"entropy{{codec=rans}}\"")
    return 0


def _qat_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "extra"}


if __name__ == "__main__":
    raise SystemExit(main())
