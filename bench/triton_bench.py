"""Triton backend on a CUDA GPU (run it through the device tool): kernels against the memory-bandwidth
limit and against torch's own kernels, then SmolLM2 end to end (tokens/s, J/token, KLD).

  python bench/triton_bench.py --out bench/results/triton_bench          # everything, ~5 GPU-minutes
  python bench/triton_bench.py --kernels-only                             # GEMV/GEMM table only
  TRITON_INTERPRET=1 python bench/triton_bench.py --smoke --kernels-only  # CPU: checks the script, times nothing real

Method (../shared/README.md, H100 facts): every timing is a CUDA graph of 20 calls replayed and
timed with CUDA events, median of 7 interleaved rounds (ours and each peer alternate); weights
rotate through enough copies (> 2x the 50 MB L2) that every call reads HBM. Effective bandwidth =
bytes the kernel must read (compressed weights + scales + activations) / time, next to the
device's measured copy bandwidth (read + write bytes / time of a large device-to-device copy).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cllm_compiler.backends.triton_layout import lower_weight  # noqa: E402
from cllm_compiler.backends.triton_ops import matmul  # noqa: E402
from cllm_compiler.reprs import Quantized  # noqa: E402
from cllm_compiler.reprs_codebook import Codebook  # noqa: E402
from cllm_compiler.reprs_sparse import Sparse  # noqa: E402

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (576, 576), (1536, 576), (576, 1536)]  # (N out, K in)
BATCHES = [1, 2, 4, 8, 16, 32, 64]
L2_BYTES = 50 << 20
DEV = "cuda"
ACT = torch.float16


def graph_time(fn, reps: int = 20) -> float:
    """Seconds per call of fn(), from a CUDA graph of `reps` calls (wall clock in --smoke mode)."""
    if DEV != "cuda":
        import time
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / 1e3 / reps


def rotating(make, nbytes: int) -> list:
    return [make() for _ in range(max(2, -(-3 * L2_BYTES // max(nbytes, 1))))]


def copy_bandwidth() -> float | None:
    if DEV != "cuda":
        return None
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / min(graph_time(lambda: y.copy_(x), 5) for _ in range(5))


def formats(n: int, k: int, rng: np.random.Generator) -> dict:
    q4 = Quantized(rng.integers(0, 16, (n, k), dtype=np.uint8), (rng.random((n, k // 128)) * .01).astype(np.float16),
                   None, 4, 128)
    q3 = Quantized(rng.integers(0, 8, (n, k), dtype=np.uint8), (rng.random((n, k // 128)) * .01).astype(np.float16),
                   None, 3, 128)
    lut = Codebook(rng.integers(0, 16, (1, n, k), dtype=np.uint8), rng.standard_normal((1, n, 16, 1)).astype(np.float16),
                   None, 0)
    mask = np.zeros((n, k // 4, 4), dtype=bool)
    mask[..., :2] = True
    sp = Sparse(mask.reshape(n, k), Quantized(rng.integers(0, 16, (n, k // 2), dtype=np.uint8),
                                              (rng.random((n, k // 256)) * .01).astype(np.float16), None, 4, 128), 2, 4)
    return {"int4 g128": q4, "int3 g128": q3, "lut4 row": lut, "2:4 + int4": sp}


def torch_int4(w: torch.Tensor):
    """torch's built-in int4 weight-only kernel (tinygemm), group 128, or None where unavailable."""
    try:
        n, k = w.shape
        if DEV != "cuda":
            raise RuntimeError("tinygemm is a CUDA kernel")
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
        packed = torch.ops.aten._convert_weight_to_int4pack(q, 8)
        sz = torch.rand(k // 128, n, 2, dtype=torch.bfloat16, device="cuda")
        return lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, 128, sz), packed.numel() * packed.element_size()
    except Exception as e:  # noqa: BLE001 - report the peer as missing, not crash the run
        print(f"torch int4 kernel unavailable: {e}", file=sys.stderr)
        return None


def bench_kernels(rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for n, k in SHAPES:
        fmts = {name: lower_weight(rep, (n, k), name).to(DEV) for name, rep in formats(n, k, rng).items()}
        dense = rotating(lambda: torch.randn(n, k, dtype=ACT, device=DEV), 2 * n * k)
        ours = {name: rotating(lambda g=g: g.to(DEV), g.nbytes()) for name, g in fmts.items()}
        peer_int4 = torch_int4(dense[0])
        for m in BATCHES:
            x = torch.randn(m, k, dtype=ACT, device=DEV)
            xb = x.to(torch.bfloat16)
            times: dict[str, list[float]] = {}
            for _ in range(rounds):  # interleaved: every candidate once per round
                for name, copies in ours.items():
                    it = iter(range(10**9))
                    times.setdefault(name, []).append(graph_time(
                        lambda c=copies, i=it: matmul(x, c[next(i) % len(c)])))
                it = iter(range(10**9))
                times.setdefault("torch fp16", []).append(graph_time(lambda i=it: x @ dense[next(i) % len(dense)].T))
                if peer_int4:
                    times.setdefault("torch int4 (tinygemm)", []).append(graph_time(lambda: peer_int4[0](xb)))
            med = {name: statistics.median(v) for name, v in times.items()}
            for name, t in med.items():
                nbytes = (fmts[name].nbytes() if name in fmts else 2 * n * k if name == "torch fp16"
                          else peer_int4[1]) + 2 * m * (n + k)  # type: ignore[index]
                rows.append({"n": n, "k": k, "batch": m, "kernel": name, "us": round(t * 1e6, 2),
                             "gbs": round(nbytes / t / 1e9, 1), "vs_fp16": round(med["torch fp16"] / t, 2),
                             "vs_torch_int4": (round(med["torch int4 (tinygemm)"] / t, 2)
                                               if "torch int4 (tinygemm)" in med else None)})
            print(json.dumps(rows[-len(med):]), flush=True)
    return rows


def check_correct_at_real_shapes(shapes: list[tuple[int, int]]) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for n, k in shapes:
        for name, rep in formats(n, k, rng).items():
            g = lower_weight(rep, (n, k), name).to(DEV)
            x = torch.randn(16, k, device=DEV, dtype=ACT)
            ref = x.float() @ rep.decode().to(DEV).T
            for m in (1, 16):
                err = ((matmul(x[:m], g).float() - ref[:m]).abs().max() / ref[:m].abs().max()).item()
                out.append({"n": n, "k": k, "format": name, "batch": m, "rel_max_err": err})
                print(json.dumps(out[-1]), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results/triton_bench"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--kernels-only", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one round: checks the script (CPU ok)")
    args = ap.parse_args()
    global DEV, ACT, SHAPES, BATCHES, L2_BYTES
    if args.smoke:
        SHAPES, BATCHES, L2_BYTES, args.rounds = [(96, 256)], [1, 16], 0, 1
    if not torch.cuda.is_available():
        if not args.smoke:
            print("error: no CUDA GPU here; run this through the device tool (bench/README.md, Issue 7)",
                  file=sys.stderr)
            return 2
        DEV, ACT = "cpu", torch.float32
    bw = copy_bandwidth()
    res = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (Triton interpreter, smoke)",
           "copy_bandwidth_gbs": None if bw is None else round(bw / 1e9, 1),
           "correctness": check_correct_at_real_shapes(SHAPES[:1] if args.smoke else [(4096, 4096), (14336, 4096)]),
           "kernels": bench_kernels(args.rounds)}
    if not args.kernels_only:
        from triton_e2e import end_to_end  # bench/triton_e2e.py
        res["end_to_end"] = end_to_end()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
