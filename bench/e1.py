"""E1 (issue 19): compression-aware training vs post-training compression at equal file bytes.

    python bench/e1.py                          # budgets 4, 3, 2.5, 2 bits/weight; resumable
    python bench/e1.py --budgets 3 --windows 4  # one budget
    python bench/e1.py --smoke --model TINY_HF_FOLDER --seqlen 128 --work W --out W/e1   # the flow only

At each budget B (bits/weight = model.cllm bytes x 8 / parameters, everything included) the
allocator picks per-tensor bit-widths, and the same plan is filled four ways:
  rtn        allocate + round-to-nearest          (post-training)
  gptq       allocate + GPTQ                      (post-training; `cllm-compile --budget B`)
  block      allocate + GPTQ + reconstruct        (block-wise compression-aware training)
  block+e2e  allocate + GPTQ + reconstruct + distill (+ end-to-end distillation)
beside fixed-rate post-training points (uniform RTN/GPTQ, codebook/VQ) compiled once. All are
scored by the same torch evaluator on the same WikiText-2 test windows against the same float
reference (PPL, delta PPL, KLD, top-1), and on text nothing here trains or calibrates on (the
last 5% of State of the Union and of Shakespeare from ../shared/data/train), so that a gain
seen on one text only shows. Each finished compile is recorded in e1.json at once: a rerun
skips it (resume by budget and method). Writes bench/results/e1.json, e1.md and e1.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEALED = ROOT.parent / "shared/models/smollm2-135m-instruct-healed.Q8_0.gguf"
HELD_OUT = [ROOT.parent / "shared/data/train" / f for f in ("sotu-1790-2018.txt", "shakespeare-complete.txt")]
CAL = "calibrate{cache=@CACHE@}"
ALLOC = CAL + ",allocate{budget=@B@,choices=bits=2|3|4|5|6|8,cache=@PLAN@}"
GPTQ = ALLOC + ",gptq{match=linear|embed|lm_head},quant{match=embed|lm_head}"
BUDGETED = {
    "rtn": ALLOC + ",quant{match=linear|embed|lm_head},entropy",
    "gptq": GPTQ + ",entropy",
    "block": GPTQ + ",reconstruct{resume=@RC@},entropy",
    "block+e2e": GPTQ + ",reconstruct{resume=@RC@},distill,entropy",
}
EMB = "quant{bits=6,group=128,match=embed|lm_head}"
FIXED = {  # post-training points at the rates they land on (kind: the name's first word)
    "rtn-int4-g128": f"quant{{bits=4,group=128}},{EMB},entropy",
    "rtn-int3-g128": f"quant{{bits=3,group=128}},{EMB},entropy",
    "gptq-int4-g128": f"{CAL},gptq{{bits=4,group=128}},{EMB},entropy",
    "gptq-int3-g128": f"{CAL},gptq{{bits=3,group=128}},{EMB},entropy",
    "gptq-int2-g64": f"{CAL},gptq{{bits=2,group=64}},{EMB},entropy",
    "vq-d2-2.5b-g128": f"{CAL},codebook{{bits=2.5,d=2,scope=tensor,group=128}},{EMB},entropy",
    "vq-d4-2b-g128": f"{CAL},codebook{{bits=2,d=4,scope=tensor,group=128}},{EMB},entropy",
}


def compile_one(args: argparse.Namespace, name: str, pipe: str, budget: str) -> dict:
    art, cache = args.work / name, args.work / "calibration.safetensors"
    # rows of one budget share the allocator's plan (training passes do not change it; RTN's own)
    plan = args.work / f"plan-{budget}-{'rtn' if name.endswith('-rtn') else 'gptq'}.json"
    pipe = (pipe.replace("@CACHE@", str(cache)).replace("@B@", budget).replace("@RC@", str(args.work / f"rc-{budget}"))
            .replace("@PLAN@", str(plan)))
    if args.smoke:  # the whole flow on a tiny model in seconds: short texts, few steps
        pipe = (pipe.replace("calibrate{", "calibrate{tokens=1024,seqlen=128,")
                .replace("reconstruct{", "reconstruct{tokens=1024,seqlen=128,steps=2,")
                .replace("distill,", "distill{tokens=1024,seqlen=128},"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "cllm_compiler.cli.compile", str(args.model), "-p", pipe, "-o", str(art),
           "--eval-windows", str(args.windows), "--seqlen", str(args.seqlen), "--no-lower", "--threads", "1", "--force"]
    t0 = time.perf_counter()
    with open(args.work / f"{name}.log", "w") as log:
        if subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {name} (see {args.work / name}.log)")
    wall = time.perf_counter() - t0
    if not cache.exists() and (art / "calibration.safetensors").exists():
        shutil.copyfile(art / "calibration.safetensors", cache)
    if not plan.exists() and (art / "allocation.json").exists():
        shutil.copyfile(art / "allocation.json", plan)
    rep = json.loads((art / "report.json").read_text())
    ev = rep["eval"]
    ref, got = ev["reference"], ev["compressed"]
    row = {"name": name, "budget": budget, "bpw": rep["bits_per_weight"], "bytes": rep["artifact_bytes"],
           "ppl": got["ppl"], "ref_ppl": ref["ppl"], "dppl": got["ppl"] / ref["ppl"] - 1, "kld": got["kld_mean"],
           "top1": got["top1_agree"], "wall_s": round(wall, 1), "peak_rss_mib": rep["peak_rss_mib"],
           "passes": pass_seconds(rep["timing"]["passes"]),
           "tokens": stage_tokens(rep["pipeline"]), "pipeline": rep["pipeline"],
           "notes": [n for n in rep["notes"] if "held-out" in n or n.startswith(("allocated", "allocation reused"))]}
    row["heldout"] = heldout_eval(args, art)
    return row


def pass_seconds(records: list[dict]) -> dict:
    out: dict[str, float] = {}
    for r in records:
        name = r["pass"].split("{")[0]
        out[name] = round(out.get(name, 0.0) + r["seconds"], 1)
    return out


def stage_tokens(pipeline: str) -> dict:
    """Tokens each training/calibration stage saw (forward passes over text, not distinct tokens)."""
    from cllm_compiler.pipeline import parse_pipeline
    out = {}
    for p in parse_pipeline(pipeline):
        a = p.args
        if p.name == "calibrate":
            out["calibrate"] = a["tokens"]
        elif p.name == "reconstruct":
            out["reconstruct"] = f"{a['tokens']} cached, {a['steps'] * a['batch'] * a['seqlen']} per layer"
        elif p.name == "distill":
            n = -(-a["tokens"] // a["seqlen"]) - a["holdout"]
            out["distill"] = n * a["seqlen"] * a["epochs"]
    return out


def heldout_eval(args: argparse.Namespace, art: Path) -> dict:
    """PPL of the float model and the artifact on the last 5% of each held-out file."""
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.container import read_container
    from cllm_compiler.evaluate import evaluate, tokenize
    from cllm_compiler.loading import load_model
    ref_model = load_model(args.model)
    ref, net = build_torch_model(ref_model), build_torch_model(read_container(art / "model.cllm"))
    out = {}
    for f in HELD_OUT:
        if not f.exists():
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        ids = tokenize(ref_model.tokenizer, text[int(len(text) * 0.95):])
        r = evaluate({"ref": ref, "art": net}, ids, ref, seqlen=args.seqlen, max_windows=args.heldout_windows)
        out[f.stem] = {"ref_ppl": r["ref"].ppl, "ppl": r["art"].ppl, "dppl": r["art"].ppl / r["ref"].ppl - 1,
                       "kld": r["art"].kld_mean}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=HEALED)
    ap.add_argument("--budgets", default="4,3,2.5,2")
    ap.add_argument("--methods", default=",".join(BUDGETED), help="which budgeted methods to run")
    ap.add_argument("--fixed", default=",".join(FIXED), help="fixed-rate post-training points ('' for none)")
    ap.add_argument("--windows", type=int, default=4, help="WikiText-2 test windows of 2048 tokens")
    ap.add_argument("--seqlen", type=int, default=2048, help="tokens per evaluation window")
    ap.add_argument("--smoke", action="store_true", help="tiny settings, to check the flow on a tiny model")
    ap.add_argument("--heldout-windows", type=int, default=2, help="windows of each held-out text")
    ap.add_argument("--work", type=Path, default=ROOT / "bench/results/e1_work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/e1")
    args = ap.parse_args()
    from e1_report import write_report
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.out.with_suffix(".json")
    meta = {"model": args.model.name, "windows": args.windows, "seqlen": args.seqlen,
            "heldout_windows": args.heldout_windows}
    old = json.loads(store.read_text()) if store.exists() else {"meta": meta, "rows": {}}
    if {**old["meta"], "model": Path(old["meta"]["model"]).name} != meta:
        raise SystemExit(f"error: {store} holds rows measured with {old['meta']}, not {meta}\n"
                         "hint: resume with the same --model/--windows/--seqlen/--heldout-windows, or give another --out")
    rows = old["rows"]
    todo = [(f"b{b}-{m}", BUDGETED[m], b) for b in args.budgets.split(",") for m in args.methods.split(",") if m]
    todo += [(n, FIXED[n], "") for n in args.fixed.split(",") if n]
    for name, pipe, budget in todo:
        if name in rows:
            continue
        print(f"e1: {name} ...", flush=True)
        rows[name] = compile_one(args, name, pipe, budget)
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        tmp.replace(store)  # each result lands whole: a killed run resumes after the last one
        write_report(rows, args.out)  # the table and plot so far, as each result lands
        print(f"e1: {name}: {rows[name]['bpw']:.3f} bpw, dPPL {rows[name]['dppl']:+.1%}, KLD {rows[name]['kld']:.4f}, "
              f"{rows[name]['wall_s']:.0f} s", flush=True)
    write_report(rows, args.out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(ROOT))
    main()
