"""Block-wise training of single layers of a compiled model, for choosing `reconstruct`'s modes
and rates (issue 19; results in bench/README.md).

  python bench/block_tune.py FLOAT_MODEL ARTIFACT --layers 2,10 \\
      --config "steps=60,codes=keep" --config "steps=60,codes=learn" [--same]

ARTIFACT is a cllm-compile output of FLOAT_MODEL (e.g. GPTQ int3, no reconstruct). Layers before
each listed one run as compressed; the listed layer is trained from the artifact's records toward
the float layer (on the float model's inputs, or with --same on the compressed inputs) and its
held-out relative output error is printed before and after.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cllm_compiler import layerwise  # noqa: E402
from cllm_compiler.container import read_container  # noqa: E402
from cllm_compiler.loading import load_model  # noqa: E402
from cllm_compiler.passes.calibrate import calibration_text, sample  # noqa: E402
from cllm_compiler.passes.reconstruct import _apply  # noqa: E402
from cllm_compiler.training.blocktrain import train_block  # noqa: E402
from cllm_compiler.training.blockwise import BlockConfig  # noqa: E402


def config(text: str) -> BlockConfig:
    """'steps=60,codes=keep,lr_scale=3e-3' -> BlockConfig."""
    kw: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        kw[k] = v if k == "codes" else (int(v) if k in ("steps", "batch", "holdout", "seed") else float(v))
    return BlockConfig(**kw)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--layers", default="2,10")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--same", action="store_true", help="target: the float layer on the compressed inputs")
    args = ap.parse_args()
    fm, qm = load_model(args.model), read_container(args.artifact / "model.cllm")
    text, _ = calibration_text("moby-dick")
    ids = sample(torch.tensor(qm.tokenizer.load().encode(text, add_special_tokens=False).ids), args.tokens, 512)
    layers = sorted(int(x) for x in args.layers.split(","))
    cs = layerwise.rotary(qm, 512)
    hq, hf = layerwise.embed(qm, ids), layerwise.embed(fm, ids)
    for i in range(layers[-1] + 1):
        ref = layerwise.layer(fm, i)
        y = _apply(ref, hf, cs)
        for spec in args.config if i in layers else []:
            blk = layerwise.layer(qm, i)
            names = {f"model.layers.{i}.{p}.weight": p for p in layerwise.LINEARS}
            lins = {n: blk.get_submodule(p) for n, p in names.items()}
            reps = {n: qm.tensors[n].rep.inner() for n in names}
            floats = {n: fm.tensors[n].rep.decode() for n in names}
            norms = {k: p for k, p in blk.named_parameters() if k.endswith("layernorm.weight")}
            t0 = time.perf_counter()
            _, _, r = train_block(blk, lambda x, b=blk: b(x, position_embeddings=cs), lins, reps, floats, norms,
                                  hq, _apply(ref, hq, cs) if args.same else y, config(spec))
            print(f"layer {i} {spec:32s} held-out error {r.loss_before:.5f} -> trained {r.loss_trained:.5f} "
                  f"(x{r.loss_trained / r.loss_before:.3f}, kept: {'trained' if r.trained else 'start'}) "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        hq, hf = _apply(layerwise.layer(qm, i), hq, cs), y


if __name__ == "__main__":
    main()
