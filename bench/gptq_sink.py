"""GPTQ vs RTN end to end on SmolLM2 (issue 19): the same int4 grid, the calibration Hessian with
each sequence's first token (the attention sink) weighted by alpha (calibrate's sink= is
alpha / seqlen), KLD against the float model on
WikiText-2 test windows (evaluation only: calibration is on Moby-Dick).

  python bench/gptq_sink.py --alphas 1,4,16,64 --mode dyn      # min-max groups fitted while rounding
  python bench/gptq_sink.py --alphas 1,16 --mode static        # groups fitted up front (RTN's grid)
  python bench/gptq_sink.py --alphas 1,16 --mode ao            # act-order + clipping search
  python bench/gptq_sink.py --tokens 65536 --seqlen 2048       # the calibration that made GPTQ worse

Linears only (int4, group 128, asymmetric int zero points); the tied embedding stays float, so
the numbers isolate the linears' rounding.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cllm_compiler import layerwise  # noqa: E402
from cllm_compiler.backends.torch_ref import build_torch_model  # noqa: E402
from cllm_compiler.calibration import input_key  # noqa: E402
from cllm_compiler.evaluate import evaluate, tokenize, wikitext_text  # noqa: E402
from cllm_compiler.ir import LINEAR_ROLES  # noqa: E402
from cllm_compiler.loading import load_model  # noqa: E402
from cllm_compiler.passes.calibrate import calibration_text, sample, sink_weights  # noqa: E402
from cllm_compiler.passes.gptq import UniformGrid, gptq  # noqa: E402
from cllm_compiler.passes.quant import quantize_rtn  # noqa: E402

HEALED = Path(__file__).resolve().parents[2] / "shared/models/smollm2-135m-instruct-healed.Q8_0.gguf"


def hessians(model, batch: torch.Tensor, alphas: list[float]) -> dict[float, dict[str, torch.Tensor]]:
    hs: dict[float, dict[str, torch.Tensor]] = {a: {} for a in alphas}

    def hook(name: str, x: torch.Tensor) -> None:
        if input_key(name) != name or name == "lm_head.weight":
            return
        x = x.float()
        for a in alphas:
            w = sink_weights(batch.shape[1], a / batch.shape[1]).repeat(x.shape[0] // batch.shape[1])
            h = (x * w[:, None]).T @ x
            hs[a][name] = hs[a][name] + h if name in hs[a] else h
    layerwise.run(model, batch, hook)
    return hs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(HEALED))
    ap.add_argument("--alphas", default="1,16")
    ap.add_argument("--mode", choices=("dyn", "static", "ao"), default="dyn")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    alphas = [float(a) for a in args.alphas.split(",")]
    model = load_model(args.model)
    ids = torch.tensor(model.tokenizer.load().encode(calibration_text("")[0], add_special_tokens=False).ids)
    hs = hessians(model, sample(ids, args.tokens, args.seqlen), alphas)
    ref = build_torch_model(model)
    lin = [n for n in model if n.role in LINEAR_ROLES]
    orig = {n.name: n.rep for n in lin}
    nets = {}
    for a in alphas:
        t0 = time.time()
        for n in lin:
            w, H = orig[n.name].decode().float(), hs[a][input_key(n.name)]
            start = quantize_rtn(w, 4, 128, False, "int", args.mode == "ao", H.diagonal().clamp_min(0)) \
                if args.mode != "dyn" else None
            grid = UniformGrid(*w.shape, 4, 128, False, "int", start)
            n.rep = grid.build(gptq(w, H, grid, 0.01, 128, args.mode == "ao"))
        nets[f"gptq-{args.mode} sink x{a:g}"] = build_torch_model(model)
        print(f"built sink x{a:g} in {time.time() - t0:.0f} s", flush=True)
    for n in lin:
        n.rep = quantize_rtn(orig[n.name].decode().float(), 4, 128, False)
    nets["rtn"] = build_torch_model(model)
    res = evaluate(nets, tokenize(model.tokenizer, wikitext_text()), reference=ref, seqlen=2048,
                   max_windows=args.windows)
    print(f"| variant ({args.tokens} tokens, {args.seqlen}-token windows) | PPL | KLD | top-1 |\n|---|---|---|---|")
    for k, v in res.items():
        d = v.to_dict()
        print(f"| {k} | {d['ppl']:.3f} | {d['kld_mean']:.4f} | {d['top1_agree']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
