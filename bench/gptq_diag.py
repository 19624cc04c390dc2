"""Why GPTQ loses to round-to-nearest on SmolLM2 (issue 19): per-tensor output error of RTN and
GPTQ on held-out text, split by token class, with the calibration Hessian built several ways.

For a few layers, the inputs of q_proj, o_proj and down_proj are captured on calibration text
(Moby-Dick) and on held-out text (Shakespeare, not WikiText: never calibrate or tune on the
evaluation set). Each variant of H is handed to the same GPTQ; the result is scored by
||(W_q - W) x||^2 over held-out tokens, split into each window's first token and the rest.

  python bench/gptq_diag.py [--model M.gguf] [--tokens 16384] [--seqlen 512] [--layers 3,15,27]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cllm_compiler import layerwise  # noqa: E402
from cllm_compiler.loading import load_model  # noqa: E402
from cllm_compiler.passes.calibrate import calibration_text, sample  # noqa: E402
from cllm_compiler.passes.gptq import UniformGrid, gptq  # noqa: E402
from cllm_compiler.passes.quant import quantize_rtn  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def capture(model, ids: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook(name: str, x: torch.Tensor) -> None:
        if name in got:
            got[name].append(x.detach().clone())
    layerwise.run(model, ids, hook)
    return {k: torch.cat(v) for k, v in got.items()}


def out_err(dw: torch.Tensor, x: torch.Tensor, first: torch.Tensor) -> dict[str, float]:
    e = (x @ dw.T).pow(2).sum(1)  # per token
    return {"all": float(e.mean()), "first": float(e[first].mean()), "rest": float(e[~first].mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(SHARED / "models/smollm2-135m-instruct-healed.Q8_0.gguf"))
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--layers", default="3,15,27")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--parts", default="self_attn.q_proj,self_attn.o_proj,mlp.down_proj")
    ap.add_argument("--damps", default="0.01")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    tok = model.tokenizer.load()
    cal_ids = torch.tensor(tok.encode(calibration_text("")[0], add_special_tokens=False).ids)
    test_text = (SHARED / "data/train/shakespeare-complete.txt").read_text(errors="replace")[:400_000]
    test_ids = torch.tensor(tok.encode(test_text, add_special_tokens=False).ids)
    cal = sample(cal_ids, args.tokens, args.seqlen)
    test = sample(test_ids, 8192, args.seqlen)
    names = {f"model.layers.{i}.{p}.weight" for i in map(int, args.layers.split(","))
             for p in args.parts.split(",")}
    xc, xt = capture(model, cal, names), capture(model, test, names)
    first_c = (torch.arange(cal.numel()) % args.seqlen) == 0
    first_t = (torch.arange(test.numel()) % args.seqlen) == 0
    rows = []
    for name in sorted(names):
        w = model.tensors[name].rep.decode().float()
        x, y = xc[name], xt[name]
        norms = x.norm(dim=1)
        H = x.T @ x
        dw_rtn = quantize_rtn(w, args.bits, args.group, False).decode() - w
        res = {"tensor": name, "first_token_share_of_H_trace": float(norms[first_c].pow(2).sum() / norms.pow(2).sum()),
               "rtn": {"held-out": out_err(dw_rtn, y, first_t)["all"], "in-sample": out_err(dw_rtn, x, first_c)["all"]}}
        for damp in map(float, args.damps.split(",")):
            for ao in (False, True):
                if ao:
                    grid = UniformGrid(*w.shape, args.bits, args.group, False, "int", quantize_rtn(w, args.bits, args.group, False))
                else:
                    grid = UniformGrid(*w.shape, args.bits, args.group, False, "int")
                q = grid.build(gptq(w, H, grid, damp, 128, ao)).decode()
                res[f"gptq damp={damp} ao={ao}"] = {"held-out": out_err(q - w, y, first_t)["all"],
                                                    "in-sample": out_err(q - w, x, first_c)["all"]}
        rows.append(res)
        print(json.dumps(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
