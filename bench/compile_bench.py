"""Compile time and peak RSS of cllm (SmolLM2 int4 g128 + zstd) vs llama.cpp's quantizer (Q4_0).

Both read the same SmolLM2 GGUF. Runs are interleaved (A B A B ...), each in a fresh process
whose peak RSS comes from wait4(); we report medians and the time ratio. One thread each.

    python bench/compile_bench.py [--runs 5] [--out bench/results/compile_bench.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPE = "quant{bits=4,group=128},quant{bits=8,group=128,match=embed},entropy{codec=zstd}"
ENV = dict(os.environ, OMP_NUM_THREADS="1", CLLM_THREADS="1")

LOADED = """
import sys, torch
from cllm_compiler.loading import load_model
m = load_model(sys.argv[1])
sd = {n.name: n.rep.decode() for n in m}   # the whole model resident, float32
"""

LLAMA = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
p.nthread = 1
p.allow_requantize = True   # the source is already Q4_1
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p)
sys.exit(rc)
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:4]} failed: {p.stderr.read().decode()[-2000:]}")
    return wall, ru.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results/compile_bench.json"))
    args = ap.parse_args()
    from cllm_compiler.default_model import default_model_path
    model = args.model or str(default_model_path())
    tmp = Path(tempfile.mkdtemp(prefix="cllm-bench-"))
    cllm = [sys.executable, "-m", "cllm_compiler.cli.compile", model, "-p", PIPE, "-o", str(tmp / "art"),
            "--eval-windows", "0", "--force"]
    llama = [sys.executable, "-c", LLAMA, model, str(tmp / "q4_0.gguf")]
    loaded = [timed([sys.executable, "-c", LOADED, model])[1] for _ in range(2)]
    rows: dict[str, list[tuple[float, float]]] = {"cllm": [], "llama.cpp": []}
    for _ in range(args.runs):
        rows["cllm"].append(timed(cllm))
        rows["llama.cpp"].append(timed(llama))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v)) for k, v in rows.items()}
    res = {
        "model": model, "pipeline": PIPE, "runs": args.runs, "threads": 1,
        "cllm_s": med["cllm"][0], "cllm_peak_rss_mib": med["cllm"][1],
        "llama_cpp_q4_0_s": med["llama.cpp"][0], "llama_cpp_peak_rss_mib": med["llama.cpp"][1],
        "time_ratio_cllm_over_llama_cpp": med["cllm"][0] / med["llama.cpp"][0],
        "loaded_model_peak_rss_mib": min(loaded),
        "cllm_rss_above_loaded_model_mib": med["cllm"][1] - min(loaded),
        "artifact_bytes": (tmp / "art" / "model.cllm").stat().st_size,
        "llama_cpp_q4_0_bytes": (tmp / "q4_0.gguf").stat().st_size,
        "all_runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "all_runs"}, indent=1))


if __name__ == "__main__":
    main()
