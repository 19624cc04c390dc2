"""Threads on a small shared machine (issue 18): batch-1 decode tok/s of cllm's TVM package, llama.cpp
and torch at 1 and 2 threads, under the runtime settings that decide how idle threads wait.

Each configuration runs in its own process (the settings are read when a runtime starts its
pool), in interleaved rounds (order reversed every other round); medians of --rounds.
  TVM:       TVM_THREAD_POOL_SPIN_COUNT (default: workers spin before sleeping; 0: sleep at once),
             TVM_BIND_THREADS (default 1: pin workers to cores; 0: let the OS place them)
  llama.cpp: its own ggml thread pool (llama-cpp-python exposes no polling setting)
  torch:     OMP_WAIT_POLICY (GNU OpenMP: active spinning by default; PASSIVE: sleep at once)

    python bench/threads_bench.py [--rounds 5]        (after bench/cpu_bench.py built the files)
writes bench/results/threads_bench.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "cpu_work"
CONFIGS = {  # name: (runner, threads, env)
    "tvm 1": ("tvm", 1, {}),
    "tvm 2": ("tvm", 2, {}),
    "tvm 2, spin 0": ("tvm", 2, {"TVM_THREAD_POOL_SPIN_COUNT": "0"}),
    "tvm 2, unbound": ("tvm", 2, {"TVM_BIND_THREADS": "0"}),
    "llama.cpp Q4_0 1": ("gguf", 1, {}),
    "llama.cpp Q4_0 2": ("gguf", 2, {}),
    "torch fp32 1": ("torch", 1, {}),
    "torch fp32 2": ("torch", 2, {}),
    "torch fp32 2, OMP_WAIT_POLICY=PASSIVE": ("torch", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
}
CHILD = """
import sys, json, time
kind, threads, path, ir_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
from cllm_compiler.container import read_container
from cllm_compiler.evaluate import tokenize, wikitext_text
ir = read_container(ir_path)
ids = tokenize(ir.tokenizer, wikitext_text())[:128].tolist()
if kind == "tvm":
    from cllm_compiler.backends.tvm_run import TvmModel
    m = TvmModel(path + "/tvm", threads=threads)
elif kind == "gguf":
    from cllm_compiler.backends.gguf_run import LlamaCppModel
    m = LlamaCppModel(path, n_ctx=512, threads=threads, logits_all=False, kv_type="f16")
else:
    import torch
    torch.set_num_threads(threads)
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.validation.latency import TorchRunner
    m = TorchRunner(build_torch_model(ir))
m.speed(ids[:16], 4)
print(json.dumps(m.speed(ids, 32)))
"""


def run(name: str, host_isa: str) -> float:
    kind, threads, env = CONFIGS[name]
    path = {"tvm": WORK / f"cllm-{host_isa}", "gguf": WORK / "llama-Q4_0.gguf", "torch": WORK / f"cllm-{host_isa}"}[kind]
    full = {**os.environ, "OMP_NUM_THREADS": str(threads), "CLLM_THREADS": str(threads), **env}
    ir = WORK / "cllm-gptq-int4-g128" / "model.cllm"
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(threads), str(path), str(ir)], capture_output=True, text=True,
                         env=full, timeout=600, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["decode_tok_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from cllm_compiler.targets.host import pick_host_target
    isa = pick_host_target().target.name
    names = list(CONFIGS)
    runs: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(run(name, isa))
        print(f"round {r + 1}/{args.rounds}", flush=True)
    med = {k: float(np.median(v)) for k, v in runs.items()}
    res = ROOT / "bench" / "results"
    (res / "threads_bench.json").write_text(json.dumps({"isa": isa, "median_decode_tok_s": med, "runs": runs}, indent=1))
    lines = [f"Decode tok/s, batch 1, healed SmolLM2 (cllm {isa} package: GPTQ int4 g128 + int8 embedding; llama.cpp "
             f"Q4_0; torch fp32), 32 tokens after a 128-token prompt, median of {args.rounds} interleaved rounds.", "",
             "| configuration | decode tok/s | vs 1 thread |", "|---|---|---|"]
    for k in names:
        base = med[k.split(" ")[0] + (" Q4_0 1" if k.startswith("llama") else " fp32 1" if k.startswith("torch") else " 1")]
        lines.append(f"| {k} | {med[k]:.1f} | {med[k] / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    (res / "threads_bench.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
