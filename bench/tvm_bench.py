"""TVM backend benchmark (issue 6): decode speed of cllm's TVM x86 build against llama.cpp on the
same model and thread count, quality of both against the fp32 torch reference, and one GEMV
kernel against dequantize-then-numpy and onnxruntime's MatMulNBits.

cllm files: `cllm-compile --target host` (x86-avx512 or x86-avx2, by this CPU) with int4 g128 RTN (the target's default pipeline),
GPTQ int4 g128 (act-order, clip search), 4-bit per-row LUTs + GPTQ, and the allocator at 5.4 bits/weight
(per-tensor 2-8 bits, GPTQ), all lowered to the TVM kernels. Peers: llama.cpp Q4_0 and Q4_K_M from an F16 GGUF of the same healed
model (`llama_model_quantize`). All run on 1 thread. Speed: interleaved rounds (order reversed
every other round), decode tok/s after a 128-token prompt, median of --rounds; ratios are
medians of per-round ratios. Quality: KLD / top-1 / PPL on --windows x --seqlen WikiText-2 tokens.

    python bench/tvm_bench.py [--rounds 5] [--windows 2]
writes bench/results/tvm_bench.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]
HEALED = ROOT.parent / "shared/models/smollm2-135m-instruct-healed.Q8_0.gguf"
EMB = "quant{bits=8,group=128,match=embed},entropy{codec=zstd}"
CLLM = {  # @CACHE@: one calibration shared by the calibrated pipelines
    "cllm-tvm-int4-g128": f"quant{{bits=4,group=128}},{EMB}",                       # the x86 targets' default pipeline
    "cllm-tvm-gptq-int4-g128": f"calibrate{{cache=@CACHE@}},gptq{{bits=4,group=128}},{EMB}",
    "cllm-tvm-lut4-row+gptq": f"calibrate{{cache=@CACHE@}},codebook{{bits=4,scope=row}},gptq{{act_order=false}},{EMB}",
    "cllm-tvm-budget-5.4": "calibrate{cache=@CACHE@},allocate{budget=5.4,choices=bits=2|3|4|5|6|8},"
                           "gptq{match=linear|embed|lm_head},quant{match=embed|lm_head},entropy",
}
PEERS = ["Q4_0", "Q4_K_M"]


def prepare(args: argparse.Namespace) -> dict[str, dict]:
    from cllm_compiler.loading import load_model
    work, facts = args.work, {}
    n_params = load_model(args.model).num_params
    for name, pipe in CLLM.items():
        art = work / name
        if not (art / "tvm" / "tvm.json").exists():
            subprocess.run([sys.executable, "-m", "cllm_compiler.cli.compile", str(args.model), "-t", "host",
                            "-p", pipe.replace("@CACHE@", str(work / "calib")), "-o", str(art), "--eval-windows", "0",
                            "--force"], check=True)
        relower(art)  # the package always comes from the current kernels and schedules
        size = (art / "model.cllm").stat().st_size
        facts[name] = {"path": str(art / "tvm"), "kind": "tvm", "bytes": size, "bpw": size * 8 / n_params,
                       "weights_bytes": (art / "tvm" / "weights.safetensors").stat().st_size}
    facts.update(llama_peers(args.model, work, PEERS, n_params))
    return facts


def llama_peers(model: Path, work: Path, kinds: list[str], n_params: int) -> dict[str, dict]:
    """llama.cpp's own files of `model` (llama-quantize of an F16 GGUF), made once in `work`."""
    from gguf_bench import llama_quantize
    from cllm_compiler.backends.gguf_writer import write_gguf
    from cllm_compiler.loading import load_model
    from cllm_compiler.passmanager import PassManager
    from cllm_compiler.pipeline import parse_pipeline
    f16, facts = work / "reference-f16.gguf", {}
    if not f16.exists():
        m = load_model(model)
        PassManager(parse_pipeline("cast{dtype=f16,match=linear|embed|lm_head}")).run(m)
        write_gguf(m, f16)
    for kind in kinds:
        dst = work / f"llama-{kind}.gguf"
        if not dst.exists():
            llama_quantize(f16, dst, kind, None)
        facts[f"llama.cpp-{kind}"] = {"path": str(dst), "kind": "gguf", "bytes": dst.stat().st_size,
                                      "bpw": dst.stat().st_size * 8 / n_params}
    return facts


def relower(art: Path) -> None:
    import shutil
    from cllm_compiler.backends.tvm_backend import lower_artifact
    from cllm_compiler.container import read_container
    from cllm_compiler.targets import get_target
    shutil.rmtree(art / "tvm", ignore_errors=True)
    lower_artifact(read_container(art / "model.cllm"), art, get_target("host"))


def open_model(f: dict, n_ctx: int):
    if f["kind"] == "tvm":
        from cllm_compiler.backends.tvm_run import TvmModel
        return TvmModel(Path(f["path"]))
    from cllm_compiler.backends.gguf_run import LlamaCppModel
    return LlamaCppModel(Path(f["path"]), n_ctx=n_ctx)


def quality(args: argparse.Namespace, facts: dict[str, dict]) -> None:
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.evaluate import evaluate, tokenize, wikitext_text
    from cllm_compiler.loading import load_model
    model = load_model(args.model)
    ids = tokenize(model.tokenizer, wikitext_text())
    ref = build_torch_model(model)
    runners = {k: open_model(f, args.seqlen) for k, f in facts.items()}
    res = evaluate({"reference": ref, **runners}, ids, reference=ref, seqlen=args.seqlen, max_windows=args.windows)
    for k in facts:
        facts[k].update({m: getattr(res[k], m) for m in ("ppl", "kld_mean", "top1_agree")})
        runners[k].close()
    facts["_reference"] = {"ppl": res["reference"].ppl, "tokens": args.windows * args.seqlen}


def speed(args: argparse.Namespace, facts: dict[str, dict]) -> None:
    from cllm_compiler.evaluate import tokenize, wikitext_text
    from cllm_compiler.loading import load_model
    ids = tokenize(load_model(args.model).tokenizer, wikitext_text())[:128].tolist()
    names = [k for k in facts if not k.startswith("_")]
    runs: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            lm = open_model(facts[name], 512)
            lm.speed(ids[:16], 4)  # warm-up: weights into the page cache, thread pools started
            runs[name].append(lm.speed(ids, args.new_tokens)["decode_tok_s"])
            lm.close()
    dec = {k: np.array(v) for k, v in runs.items()}
    for k in names:
        facts[k]["decode_tok_s"] = float(np.median(dec[k]))
        facts[k]["decode_runs"] = [round(float(x), 1) for x in dec[k]]
        for p in PEERS:
            facts[k][f"decode_vs_{p}"] = float(np.median(dec[k] / dec[f"llama.cpp-{p}"]))


def kernels(args: argparse.Namespace) -> dict[str, dict]:
    """One int4 g128 GEMV per shape: TVM (time_evaluator), numpy after dequantizing, onnxruntime
    MatMulNBits (RTN, block 128), interleaved rounds, median microseconds."""
    import tvm
    from cllm_compiler.backends import tvm_kernels as K
    from cllm_compiler.backends.tvm_layout import lower_weight
    from cllm_compiler.backends.tvm_schedule import _matmul_cpu
    from cllm_compiler.reprs import Quantized
    from cllm_compiler.targets import get_target
    from ort_peer import build_graph, quantize
    import onnxruntime as ort
    rng, out = np.random.default_rng(0), {}
    for n, k in ((1536, 576), (576, 1536), (49152, 576)):
        ng = -(-k // 128)
        rep = Quantized(rng.integers(0, 16, (n, k)).astype(np.uint8), (rng.random((n, ng)) * .02).astype(np.float16),
                        rng.integers(0, 16, (n, ng)).astype(np.uint8), 4, 128)
        x = rng.standard_normal((1, k)).astype(np.float32)
        timers = {}
        host = get_target("host")
        for name, int8 in (("tvm", ""), ("tvm-int8", host.extra["int8_dot"])):
            lay, arrs = lower_weight(rep, (n, k), "w", int8=int8)
            func = K.matmul(lay, 1) if int8 else _matmul_cpu(K.matmul(lay, 1)).mod["main"]
            lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                              target=tvm.target.Target(host.extra["tvm_target"]))
            targs = [tvm.runtime.tensor(a) for a in [x, *[arrs[s] for s, _, _ in lay.arrays()], np.zeros((1, n), np.float32)]]
            timers[name] = (lib.mod.time_evaluator("main", tvm.cpu(), number=20, repeat=1), targs)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(quantize(build_graph({"w": rep.decode().numpy()}), "rtn", 4, 128).SerializeToString(),
                                    opts, providers=["CPUExecutionProvider"])
        feed = {"x0": x.astype(np.float16)}
        codes, scales, zeros = rep.codes, rep.scales, rep.zeros

        def numpy_path() -> None:
            w = (codes.astype(np.float32) - np.repeat(zeros, 128, 1)[:, :k]) * np.repeat(scales.astype(np.float32), 128, 1)[:, :k]
            x @ w.T

        t = {"tvm": [], "tvm-int8": [], "numpy-dequant": [], "onnxruntime-MatMulNBits": []}
        for _ in range(args.rounds):
            for name, (timer, targs) in timers.items():
                t[name].append(timer(*targs).mean * 1e6)
            t0 = time.perf_counter(); [sess.run(None, feed) for _ in range(20)]
            t["onnxruntime-MatMulNBits"].append((time.perf_counter() - t0) / 20 * 1e6)
            t0 = time.perf_counter(); [numpy_path() for _ in range(3)]
            t["numpy-dequant"].append((time.perf_counter() - t0) / 3 * 1e6)
        out[f"{n}x{k}"] = {m: float(np.median(v)) for m, v in t.items()}
    return out


def report(facts: dict[str, dict], kern: dict[str, dict], args: argparse.Namespace) -> str:
    ref = facts["_reference"]
    lines = [f"Healed SmolLM2-135M, 1 thread. Quality on {args.windows} x {args.seqlen} WikiText-2 tokens vs the fp32 "
             f"torch reference (PPL {ref['ppl']:.3f}); decode tok/s after a 128-token prompt ({args.new_tokens} new "
             f"tokens), median of {args.rounds} interleaved rounds; ratios = medians of per-round ratios.", "",
             "| file | bpw (file) | PPL | KLD | top-1 | decode tok/s | vs llama.cpp Q4_0 | vs Q4_K_M |",
             "|---|---|---|---|---|---|---|---|"]
    for k, f in facts.items():
        if k.startswith("_"):
            continue
        lines.append(f"| {k} | {f['bpw']:.3f} | {f['ppl']:.3f} | {f['kld_mean']:.4f} | {f['top1_agree']:.4f} | "
                     f"{f['decode_tok_s']:.1f} | {f['decode_vs_Q4_0']:.2f}x | {f['decode_vs_Q4_K_M']:.2f}x |")
    lines += ["", "GEMV kernel, int4 g128, batch 1, 1 thread (median us):", "",
              "| N x K | TVM fp32 act. | TVM int8 act. (host ISA's integer dots, decode default) | numpy after dequantize | "
              "onnxruntime MatMulNBits |", "|---|---|---|---|---|"]
    for shape, t in kern.items():
        lines.append(f"| {shape} | {t['tvm']:.1f} | {t['tvm-int8']:.1f} | {t['numpy-dequant']:.0f} | "
                     f"{t['onnxruntime-MatMulNBits']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=HEALED)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "tvm_work")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prepare-only", action="store_true", help="build the files and stop")
    ap.add_argument("--speed-only", action="store_true",
                    help="re-lower and re-time; keep quality and kernel numbers from the last results")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    res = ROOT / "bench" / "results"
    old = json.loads((res / "tvm_bench.json").read_text()) if args.speed_only else None
    kern = kernels(args)  # first: quick, and a failure here costs nothing long
    facts = prepare(args)
    if args.prepare_only:
        return
    if old:  # quality comes from the fp32 prefill path, which --speed-only runs do not change
        for k, f in facts.items():
            f.update({m: old["files"][k][m] for m in ("ppl", "kld_mean", "top1_agree")})
        facts["_reference"] = old["files"]["_reference"]
    else:
        quality(args, facts)
    speed(args, facts)
    (res / "tvm_bench.json").write_text(json.dumps({"files": facts, "kernels": kern}, indent=1))
    text = report(facts, kern, args)
    (res / "tvm_bench.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
