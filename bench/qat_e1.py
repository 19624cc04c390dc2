"""E1 (issue 8): compression-aware fine-tuning vs post-training quantization at equal bytes.

  python bench/qat_e1.py --device cuda --steps 600                 # on the GPU (device tool), ~25 min
  python bench/qat_e1.py --smoke --model tests-tiny-model-folder   # CPU: checks the flow only

For each target rate (int4 / int3 / int2 linears, 6-bit tied embedding, group 128) it builds:
RTN (`quant`), GPTQ (`calibrate,gptq`), SqueezeLLM-style per-row LUTs (`calibrate,codebook`),
and the compression-aware model (`cllm-train`: fake quantization on the same grid + KD from
the float model, then `cllm-compile` of the export: nothing re-fitted). Every artifact is scored
on the same WikiText-2 test windows against the same float reference (the healed SmolLM2 by
default): PPL, delta PPL, KLD, and bits/weight = artifact file bytes * 8 / parameters.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cllm_compiler.backends.torch_ref import build_torch_model  # noqa: E402
from cllm_compiler.compiler import compile_model  # noqa: E402
from cllm_compiler.evaluate import evaluate, tokenize, wikitext_text  # noqa: E402
from cllm_compiler.loading import load_model  # noqa: E402
from cllm_compiler.pipeline import parse_pipeline  # noqa: E402
from cllm_compiler.targets import get_target  # noqa: E402
from cllm_compiler.training.qat import QATConfig  # noqa: E402
from cllm_compiler.training.recipe import TrainConfig  # noqa: E402

HEALED = Path(__file__).resolve().parents[2] / "shared" / "models" / "smollm2-135m-instruct-healed.Q8_0.gguf"
EMBED = "quant{bits=6,group=128,match=embed}"
PTQ = {"RTN": "quant{bits=B,group=128}," + EMBED + ",entropy{codec=rans}",  # B: the bit-width
       "GPTQ": "calibrate,gptq{bits=B,group=128}," + EMBED + ",entropy{codec=rans}",
       "LUT/row": "calibrate,codebook{bits=B,scope=row}," + EMBED + ",entropy{codec=rans}"}


def train_qat(model: Path, bits: int, out: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    from cllm_compiler.training.export import export
    from cllm_compiler.training.train import Trainer
    cfg = TrainConfig(model=str(model), data=tuple(args.data), steps=args.steps, batch=args.batch,
                      seq_len=args.seq_len, lr=args.lr, device=args.device, log_every=max(1, args.steps // 10),
                      ckpt_every=10**9, qat=QATConfig(bits=(bits,), group=128, kd_weight=1.0, ce_weight=0.1))
    t0 = time.perf_counter()
    tr = Trainer(cfg, out, on_log=lambda r: print(json.dumps(r), flush=True))
    last = tr.train()
    tr.model.to("cpu")
    export(tr.model, tr.quantizers, out / "export", source=model if model.is_dir() else None)
    return out / "export", {"train_s": round(time.perf_counter() - t0, 1), "tokens_per_s": last.get("tokens_per_s")}


def score(art: Path, ref_net: torch.nn.Module, ids: torch.Tensor, args: argparse.Namespace) -> dict:
    net = build_torch_model(load_model(art))
    r = evaluate({"a": net}, ids, reference=ref_net, seqlen=args.seqlen, max_windows=args.windows)["a"]
    rep = json.loads((art / "report.json").read_text())
    return {"bpw": round(rep["bits_per_weight"], 4), "ppl": round(r.ppl, 4), "kld": round(r.kld_mean, 5),
            "top1": round(r.top1_agree, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=HEALED)
    ap.add_argument("--data", nargs="+", default=[str(HEALED.parents[1] / "data" / "train")])
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--windows", type=int, default=8, help="WikiText-2 windows scored per artifact")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("bench/results/qat_e1"))
    ap.add_argument("--smoke", action="store_true", help="2 steps, 1 short window: checks the flow (CPU)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.batch, args.seq_len, args.windows, args.seqlen = 2, 1, 64, 1, 128
        args.data = [] if args.data == ap.get_default("data") else args.data
    work = Path(tempfile.mkdtemp(prefix="qat_e1."))
    ref = load_model(args.model)
    ids = tokenize(ref.tokenizer, wikitext_text())
    ref_net = build_torch_model(ref)
    rows = [{"method": "float (reference)", "bits": None, **{k: v for k, v in score_ref(ref_net, ids, args).items()}}]
    for b in args.bits:
        for name, pipe in PTQ.items():
            art = work / f"{name.replace('/', '')}{b}"
            compile_model(args.model, get_target("x86-avx512"), parse_pipeline(pipe.replace("bits=B", f"bits={b}")), art, lower=False)
            rows.append({"method": name, "bits": b, **score(art, ref_net, ids, args)})
            print(json.dumps(rows[-1]), flush=True)
        exp, info = train_qat(args.model, b, work / f"qat{b}", args)
        art = work / f"QAT{b}"
        compile_model(exp, get_target("x86-avx512"), parse_pipeline(EMBED + ",entropy{codec=rans}"), art, lower=False)
        rows.append({"method": "QAT+KD (cllm-train)", "bits": b, **score(art, ref_net, ids, args), **info})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["ppl"]
    for r in rows:
        r["dppl"] = round(r["ppl"] - base, 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1, default=str))
    print(f"wrote {args.out.with_suffix('.json')}")
    return 0


def score_ref(ref_net: torch.nn.Module, ids: torch.Tensor, args: argparse.Namespace) -> dict:
    r = evaluate({"a": ref_net}, ids, seqlen=args.seqlen, max_windows=args.windows)["a"]
    return {"bpw": None, "ppl": round(r.ppl, 4), "kld": 0.0, "top1": 1.0}


if __name__ == "__main__":
    raise SystemExit(main())
