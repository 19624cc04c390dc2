"""Full WikiText-2 evaluation of SmolLM2-135M at int8/int4/int3 g128 (issue 2 acceptance).

Compiles three artifacts, then scores all of them plus the uncompressed reference on every
window, sharded over processes (one thread each: see README), and merges the shards.

    python bench/ppl_table.py [--windows N] [--shards 2] [--seqlen 2048] [--model PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

PIPELINES = {
    "int8-g128": "quant{bits=8,group=128},cast{dtype=f16,match=embed},entropy{codec=zstd}",
    "int4-g128": "quant{bits=4,group=128},quant{bits=8,group=128,match=embed},entropy{codec=zstd}",
    "int3-g128": "quant{bits=3,group=128},quant{bits=8,group=128,match=embed},entropy{codec=zstd}",
}


def run(cmd: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", CLLM_THREADS="1")
    return subprocess.Popen(cmd, env=env, **kw)


def _recompile(model: str, arts: dict[str, str]) -> None:
    """Rewrite the artifacts with the current container (same passes, so the same weights)."""
    for name, art in arts.items():
        subprocess.run([sys.executable, "-m", "cllm_compiler.cli.compile", model, "-p", PIPELINES[name],
                        "-o", art, "--eval-windows", "0", "--force"], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--windows", type=int, default=None, help="limit windows (default: all)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--work", type=Path, default=Path("bench/results/ppl_work"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/ppl_table.json"))
    ap.add_argument("--merge-only", action="store_true", help="merge existing shard outputs in --work")
    args = ap.parse_args()
    from cllm_compiler.default_model import default_model_path
    from cllm_compiler.evaluate import EvalResult, merge_results, tokenize, wikitext_text
    from cllm_compiler.loading import load_model
    model = args.model or str(default_model_path())
    args.work.mkdir(parents=True, exist_ok=True)
    arts = {}
    for name, pipe in PIPELINES.items():
        art = args.work / name
        if not (art / "model.cllm").exists() and not args.merge_only:
            subprocess.run([sys.executable, "-m", "cllm_compiler.cli.compile", model, "-p", pipe, "-o", str(art),
                            "--eval-windows", "0", "--force"], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        arts[name] = str(art)
    ntok = tokenize(load_model(model).tokenizer, wikitext_text()).numel()
    total = min(ntok // args.seqlen, args.windows or 10**9)
    per = -(-total // args.shards)
    procs: list = []
    for s in range(args.shards if not args.merge_only else 0):
        first, n = s * per, min(per, total - s * per)
        if n <= 0:
            continue
        cmd = [sys.executable, "-m", "cllm_compiler.cli.eval", *arts.values(), "--reference", model,
               "--seqlen", str(args.seqlen), "--first-window", str(first), "--max-windows", str(n),
               "--json", str(args.work / f"shard{s}.json"), "--kld-out", str(args.work / f"shard{s}.npz"),
               "--no-report"]
        procs.append((s, run(cmd)))
    for _, p in procs:
        if p.wait() != 0:
            raise SystemExit("a shard failed")
    shards = [s for s in range(args.shards) if (args.work / f"shard{s}.json").exists()]
    if args.merge_only:
        _recompile(model, arts)
    table = {}
    for name, art in [("reference", "reference"), *arts.items()]:
        parts = []
        for s in shards:
            r = json.loads((args.work / f"shard{s}.json").read_text())["results"][art]
            z = np.load(args.work / f"shard{s}.npz")
            parts.append((EvalResult(**r), z[f"{art}:kld|kld"], z[f"{art}:kld|agree"]))
        merged = merge_results(parts)
        if name == "reference":
            table[name] = dict(merged.to_dict(), source_bytes=Path(model).stat().st_size)
            continue
        size = (Path(art) / "model.cllm").stat().st_size
        params = json.loads((Path(art) / "report.json").read_text())["params"]
        table[name] = dict(merged.to_dict(), artifact_bytes=size, bits_per_weight=size * 8 / params,
                           delta_ppl_pct=100 * (merged.ppl / table["reference"]["ppl"] - 1), pipeline=PIPELINES[name])
    out = {"model": model, "seqlen": args.seqlen, "windows": total, "tokens_total": ntok, "results": table}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
