"""Choose the Triton kernels' tile configurations offline, on a GPU, and write them to
backends/triton_configs.json (committed: runs never autotune, and two runs launch the same kernels).

  python bench/triton_autotune.py            # ~3 GPU-minutes on an H100

For each kernel kind and batch bucket, every candidate (BLOCK_N, BLOCK_K, warps, stages) is timed
as a CUDA graph on 4096x4096 and 14336x4096 weights; the candidate with the lowest summed time wins.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cllm_compiler.backends.triton_layout import lower_weight  # noqa: E402
from cllm_compiler.backends.triton_ops import BUCKETS, matmul  # noqa: E402
from triton_bench import formats, graph_time  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "backends" / "triton_configs.json"
KIND_OF = {"int4 g128": "quant", "lut4 row": "lut", "2:4 + int4": "sparse"}


def candidates(m: int) -> list[dict[str, int]]:
    bm = [m] if m < 16 else [16, 32, 64]
    return [{"BLOCK_M": a, "BLOCK_N": n, "BLOCK_K": k, "num_warps": w, "num_stages": s}
            for a, n, k, w, s in itertools.product(bm, (32, 64, 128), (16, 32, 64, 128), (2, 4, 8), (2, 3))
            if a * n * k <= (1 << 16) or a >= 16]


def main() -> int:
    if not torch.cuda.is_available():
        print("error: autotuning needs a CUDA GPU (run it through the device tool)", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    table = json.loads(OUT.read_text())
    shapes = [(4096, 4096), (14336, 4096)]
    weights = {s: {name: lower_weight(rep, s, name).to("cuda") for name, rep in formats(*s, rng).items()}
               for s in shapes}
    for name, kind in KIND_OF.items():
        for m in BUCKETS:
            best = None
            for cfg in candidates(m):
                try:
                    t = sum(graph_time(lambda g=weights[s][name], x=torch.randn(m, s[1], device="cuda",
                                                                                  dtype=torch.float16):
                                       matmul(x, g, cfg=cfg)) for s in shapes)
                except Exception:  # noqa: BLE001 - a config that does not compile (shared memory) loses
                    continue
                if best is None or t < best[0]:
                    best = (t, cfg)
            if best:
                table["configs"].setdefault(kind, {})[str(m)] = best[1]
                print(kind, m, best, flush=True)
    table["source"] = "bench/triton_autotune.py"
    table["device"] = torch.cuda.get_device_name()
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
