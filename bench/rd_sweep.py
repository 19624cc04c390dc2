"""Rate-distortion sweep (issue 4): cllm pipelines vs llama.cpp's own quantizer, same model, same text.

Every point's bits/weight is file bytes x 8 / parameters (cllm: model.cllm; llama.cpp: the
.gguf), tokenizer and headers included in both. All models are scored by the same torch
evaluator on the same WikiText-2 test windows (paper protocol, seqlen 2048), KLD against the
same float reference. llama.cpp files are quantized from an F16 GGUF of the reference with
`llama_cpp.llama_model_quantize` (no importance matrix: none of these types requires one)
and dequantized with gguf-py for scoring.

    python bench/rd_sweep.py [--windows 8] [--only REGEX] [--jobs 2]
writes bench/results/rd_sweep.json, rd_sweep.md and rd_sweep.png.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HEALED = Path(__file__).resolve().parents[1].parent / "shared/models/smollm2-135m-instruct-healed.Q8_0.gguf"
CAL = "calibrate{cache=@CACHE@}"
EMB = "quant{bits=6,group=128,match=embed|lm_head}"  # fixed configs keep the (tied) embedding at 6 bits
ENT = "entropy"
CLLM: dict[str, str] = {
    **{f"rtn-int{b}-g{g}": f"quant{{bits={b},group={g}}},{EMB},{ENT}" for b in (4, 3, 2) for g in (32, 128)},
    # plain GPTQ (min-max groups, natural order) as in the paper, then with act-order + clipping search
    "gptq-int4-g128": f"{CAL},gptq{{bits=4,group=128,act_order=false,search=false}},{EMB},{ENT}",
    "gptq-int3-g128": f"{CAL},gptq{{bits=3,group=128,act_order=false,search=false}},{EMB},{ENT}",
    "gptq-int2-g64": f"{CAL},gptq{{bits=2,group=64,act_order=false,search=false}},{EMB},{ENT}",
    **{f"gptq-int{b}-g{g}-ao-search": f"{CAL},gptq{{bits={b},group={g}}},{EMB},{ENT}" for b, g in ((4, 128), (3, 128), (2, 64))},
    **{f"lut{b}-row+gptq": f"{CAL},codebook{{bits={b},scope=row}},gptq{{act_order=false}},{EMB},{ENT}" for b in (4, 3, 2)},
    "vq2-2.5b-g128": f"{CAL},codebook{{bits=2.5,d=2,scope=tensor,group=128}},{EMB},{ENT}",
    "vq4-2b-g128": f"{CAL},codebook{{bits=2,d=4,scope=tensor,group=128}},{EMB},{ENT}",
    **{f"2:4-{m}": f"{CAL},nm{{method={m}}},{EMB},{ENT}" for m in ("magnitude", "wanda", "sparsegpt")},
    **{f"2:4-{m}+int4": f"{CAL},nm{{method={m}}},quant{{bits=4,group=64}},{EMB},{ENT}" for m in ("magnitude", "wanda")},
    "2:4-sparsegpt+int4-gptq": f"{CAL},nm{{method=sparsegpt}},quant{{bits=4,group=64}},gptq,{EMB},{ENT}",
    "rtn-int3-g128+lr16": f"{CAL},quant{{bits=3,group=128}},lowrank{{rank=16}},{EMB},{ENT}",
    "gptq-int3-g128+lr16": f"{CAL},gptq{{bits=3,group=128}},lowrank{{rank=16}},{EMB},{ENT}",
    **{f"budget-{b}": (f"{CAL},allocate{{budget={b},choices=bits=2|3|4|5|6|8}},"
                       "gptq{match=linear|embed|lm_head},quant{match=embed|lm_head},entropy") for b in (2.5, 3, 3.5, 4.5)},
    "budget-3.5-relative": (f"{CAL},allocate{{budget=3.5,metric=relative,choices=bits=2|3|4|5|6|8}},"
                            "gptq{match=linear|embed|lm_head},quant{match=embed|lm_head},entropy"),
    "lut3-row+gptq-ao": f"{CAL},codebook{{bits=3,scope=row}},gptq,{EMB},{ENT}",
    "vq4-2b-g128-shared": f"{CAL},codebook{{bits=2,d=4,scope=tensor,group=128,share=role}},{EMB},{ENT}",
}
LLAMA = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS"]


def sh(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", CLLM_THREADS="1")
    with open(log, "w") as f:
        if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)} (see {log})")


def f16_gguf(model: Path, out: Path) -> None:
    from cllm_compiler.backends.gguf_writer import write_gguf
    from cllm_compiler.loading import load_model
    from cllm_compiler.passmanager import PassManager
    from cllm_compiler.pipeline import parse_pipeline
    m = load_model(model)
    PassManager(parse_pipeline("cast{dtype=f16,match=linear|embed|lm_head}")).run(m)
    write_gguf(m, out)


def llama_quantize(src: Path, dst: Path, kind: str) -> float:
    import ctypes
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = 1
    t0 = time.perf_counter()
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize {kind} failed")
    return time.perf_counter() - t0


def prepare(args: argparse.Namespace, work: Path, todo: dict[str, str]) -> dict[str, dict]:
    """Compile every cllm config and quantize every llama.cpp type; returns size/time facts."""
    facts: dict[str, dict] = {}
    f16 = work / "reference-f16.gguf"
    if not f16.exists():
        f16_gguf(args.model, f16)
    cache = work / "calib"
    if not (cache / "calibration.safetensors").exists():
        sh([sys.executable, "-m", "cllm_compiler.cli.compile", str(args.model), "-p", "calibrate,cast{dtype=f16}",
            "-o", str(cache), "--eval-windows", "0", "--force"], work / "calib.log")
    for name, pipe in todo.items():
        art = work / name
        if args.no_compile and not (art / "report.json").exists():
            continue
        if not (art / "report.json").exists():
            sh([sys.executable, "-m", "cllm_compiler.cli.compile", str(args.model), "-p", pipe.replace("@CACHE@", str(cache)),
                "-o", str(art), "--eval-windows", "0", "--force"], work / f"{name}.log")
        rep = json.loads((art / "report.json").read_text())
        facts[name] = {"path": str(art), "bytes": rep["artifact_bytes"], "bpw": rep["bits_per_weight"],
                       "params": rep["params"], "compile_s": rep["timing"]["compile_s"],
                       "peak_rss_mib": rep["peak_rss_mib"], "passes": rep["timing"]["passes"],
                       "pipeline": rep["pipeline"], "kind": "cllm"}
    params = facts[next(iter(facts))]["params"] if facts else None
    for kind in LLAMA if re.search(args.only, "llama") or args.only == "." else []:
        dst = work / f"llama-{kind}.gguf"
        if args.no_compile and not dst.exists():
            continue
        secs = None if dst.exists() else llama_quantize(f16, dst, kind)
        facts[f"llama.cpp-{kind}"] = {"path": str(dst), "bytes": dst.stat().st_size, "kind": "llama.cpp",
                                      "quantize_s": secs, "params": params}
    from ort_peer import CONFIGS, prepare_ort
    facts.update(prepare_ort(args.model, work, [c for c in CONFIGS if re.search(args.only, c)
                                                and not (args.no_compile and not (work / f"{c}.cllm").exists())]))
    return facts


def evaluate(args: argparse.Namespace, work: Path, facts: dict[str, dict]) -> None:
    names = [n for n in facts if not (work / f"eval-{n}.json").exists()]
    groups = [names[i::args.groups] for i in range(args.groups)]
    running: list[tuple[subprocess.Popen, list[str], Path]] = []
    env = dict(os.environ, OMP_NUM_THREADS="1", CLLM_THREADS="1")
    for gi, group in enumerate(g for g in groups if g):
        while len(running) >= args.jobs:
            _reap(running, facts, work)
        out = work / f"evalgroup{gi}-{os.getpid()}.json"
        cmd = [sys.executable, "-m", "cllm_compiler.cli.eval", *[facts[n]["path"] for n in group],
               "--reference", str(args.model), "--max-windows", str(args.windows), "--json", str(out), "--no-report"]
        running.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "w")),
                        group, out))
    while running:
        _reap(running, facts, work)


def _reap(running: list, facts: dict[str, dict], work: Path) -> None:
    while True:
        for i, (p, group, out) in enumerate(running):
            if p.poll() is not None:
                if p.returncode:
                    raise SystemExit(f"evaluation failed, see {out.with_suffix('.log')}")
                res = json.loads(out.read_text())
                for n in group:
                    r = res["results"][facts[n]["path"]]
                    (work / f"eval-{n}.json").write_text(json.dumps({"result": r, "reference": res["results"]["reference"]}))
                running.pop(i)
                return
        time.sleep(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=HEALED)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--only", default=".", help="regex over config names ('llama' selects the peers)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="only evaluate what is already compiled")
    ap.add_argument("--no-eval", action="store_true", help="only compile (evaluate later)")
    ap.add_argument("--groups", type=int, default=6, help="evaluation processes (models per process share one reference pass)")
    ap.add_argument("--work", type=Path, default=Path("bench/results/rd_work"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/rd_sweep"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    todo = {k: v for k, v in CLLM.items() if re.search(args.only, k)}
    facts = prepare(args, args.work, todo)
    (args.work / "facts.json").write_text(json.dumps(facts, indent=1))
    if args.no_eval:
        return
    evaluate(args, args.work, facts)
    from rd_report import write_report
    write_report(facts, args.work, args.out, args.windows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
