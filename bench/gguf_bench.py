"""GGUF benchmark (issue 5): llama.cpp's own quantizer vs cllm's GGUF at matched file sizes,
all run in llama.cpp on the same WikiText-2 windows.

Peers: `llama_model_quantize` from an F16 GGUF of the reference, each type without and with an
importance matrix (ours, from the same calibration text cllm uses: mean x^2 per input channel).
cllm: `cllm-compile --target gguf-cpu --budget B` with B = each peer file's bits/weight (the
allocator picks per-tensor GGUF types, budgeted in GGUF bytes). Scores: PPL and KLD against
the fp32 torch reference (same tokens), decode tokens/s as a ratio to llama.cpp F16 measured
in the same run (interleaved rounds, median of --rounds).

    python bench/gguf_bench.py [--windows 8] [--jobs 2] [--rounds 5]
writes bench/results/gguf_bench.{json,md}.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HEALED = Path(__file__).resolve().parents[1].parent / "shared/models/smollm2-135m-instruct-healed.Q8_0.gguf"
TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS"]
GGUF_PIPE = ("calibrate{{cache={cache}}},allocate{{budget={b},rate=gguf,choices=type={types}}},"
             "ggml{{match=linear|embed|lm_head,fallback={fallback}}},entropy")
# cllm = the CLI's --budget default (every type, llama.cpp's substitutes on rows that are not whole
# blocks); cllm-v2 = the speed-first set: no Q5_0/Q5_1 (slow on x86 llama.cpp), no substitutes.
VARIANTS = {"cllm": (None, "llama"), "cllm-v2": ("Q2_K|Q3_K|Q4_0|IQ4_NL|Q4_K|Q5_K|Q6_K|Q8_0", "error")}


def sh(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", CLLM_THREADS="1")
    with open(log, "w") as f:
        if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)} (see {log})")


def imatrix_entries(cache: Path, model_path: Path) -> list[tuple[str, np.ndarray]]:
    """Our calibration statistics as llama.cpp imatrix entries (GGUF tensor name, mean x^2)."""
    from safetensors import safe_open

    from cllm_compiler.backends.gguf_writer import gguf_name
    from cllm_compiler.calibration import Calibration
    from cllm_compiler.ir import LINEAR_ROLES
    from cllm_compiler.loading import load_model
    with safe_open(str(cache / "calibration.safetensors"), framework="pt") as f:
        key = json.loads(f.metadata()["key"])
    cal = Calibration.load(cache / "calibration.safetensors", key)
    if cal is None:
        raise SystemExit("calibration cache unreadable")
    out: list[tuple[str, np.ndarray]] = []
    for node in load_model(model_path):
        if (node.role in LINEAR_ROLES or node.role == "lm_head") and cal.has(node.name):
            e = cal.input_mean_sq(node.name).numpy().astype(np.float32)
            out.append((gguf_name(node.name), e))
    if not out:
        raise SystemExit("no imatrix entries: calibration names do not match the model")
    return out


def llama_quantize(src: Path, dst: Path, kind: str, imatrix: list[tuple[str, np.ndarray]] | None) -> None:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = 1
    keep = []
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # zero entry terminates
        for i, (name, data) in enumerate(imatrix):
            keep.append(np.ascontiguousarray(data))
            arr[i].name = name.encode()
            arr[i].data = keep[-1].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = data.size
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize {kind} failed")


def prepare(args: argparse.Namespace) -> dict[str, dict]:
    from cllm_compiler.backends.gguf_writer import write_gguf
    from cllm_compiler.loading import load_model
    from cllm_compiler.passmanager import PassManager
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.cli.compile import GGUF_TYPES
    work, files = args.work, {}
    f16 = work / "reference-f16.gguf"
    if not f16.exists():
        m = load_model(args.model)
        PassManager(parse_pipeline("cast{dtype=f16,match=linear|embed|lm_head}")).run(m)
        write_gguf(m, f16)
    files["llama.cpp-F16"] = f16
    cache = work / "calib"
    if not (cache / "calibration.safetensors").exists():
        sh([sys.executable, "-m", "cllm_compiler.cli.compile", str(args.model), "-p", "calibrate,cast{dtype=f16}",
            "-o", str(cache), "--eval-windows", "0", "--force"], work / "calib.log")
    imat = imatrix_entries(cache, args.model)
    for kind in args.types:
        for tag, im in (("", None), ("+imatrix", imat)):
            dst = work / f"llama-{kind}{tag}.gguf"
            if not dst.exists():
                llama_quantize(f16, dst, kind, im)
            files[f"llama.cpp-{kind}{tag}"] = dst
    n_params = load_model(args.model).num_params
    types, fallback = VARIANTS[args.variant]
    for kind in args.types:  # cllm at the size of each llama.cpp type
        bpw = files[f"llama.cpp-{kind}"].stat().st_size * 8 / n_params
        art = work / f"{args.variant}-{kind}-size"
        if not (art / "model.gguf").exists():
            pipe = GGUF_PIPE.format(cache=cache, b=f"{bpw - 0.0005:.4f}", types=types or GGUF_TYPES, fallback=fallback)
            sh([sys.executable, "-m", "cllm_compiler.cli.compile", str(args.model), "-t", "gguf-cpu", "-p", pipe,
                "-o", str(art), "--eval-windows", "0", "--force"], work / f"{args.variant}-{kind}-size.log")
        files[f"{args.variant}@{kind}-size"] = art / "model.gguf"
    return {k: {"path": str(p), "bytes": p.stat().st_size, "bpw": p.stat().st_size * 8 / n_params}
            for k, p in files.items()}


def eval_shard(model: Path, files: dict[str, str], windows: list[int], seqlen: int, out: Path) -> None:
    """Score every GGUF in llama.cpp on `windows`; KLD against the fp32 torch reference."""
    import torch
    import torch.nn.functional as F

    from cllm_compiler.backends.gguf_run import LlamaCppModel
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.evaluate import _kld_rows, tokenize, wikitext_text
    from cllm_compiler.loading import load_model
    torch.set_num_threads(1)
    m = load_model(model)
    ids = tokenize(m.tokenizer, wikitext_text())
    ref_net = build_torch_model(m)
    res: dict[str, dict[str, list]] = {k: {"nll": [], "kld": [], "agree": []} for k in files}
    for w in windows:
        x = ids[w * seqlen:(w + 1) * seqlen][None]
        with torch.inference_mode():
            ref = ref_net(x).logits[0, :-1]
        for name, path in files.items():
            lm = LlamaCppModel(Path(path), n_ctx=seqlen)
            logits = lm(x).logits[0, :-1]
            lm.close()
            res[name]["nll"].append(float(F.cross_entropy(logits, x[0, 1:], reduction="sum")))
            k, a = _kld_rows(ref, logits)
            res[name]["kld"] += k.tolist()
            res[name]["agree"] += a.tolist()
    out.write_text(json.dumps(res))


def evaluate(args: argparse.Namespace, facts: dict[str, dict]) -> None:
    files = {k: v["path"] for k, v in facts.items()}
    shards = [list(range(args.windows))[i::args.jobs] for i in range(args.jobs)]
    procs = []
    for i, ws in enumerate(shards):
        out = args.work / f"shard{i}.json"
        cmd = [sys.executable, __file__, "--shard", json.dumps({"windows": ws, "files": files, "out": str(out)}),
               "--model", str(args.model), "--seqlen", str(args.seqlen)]
        procs.append((subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", CLLM_THREADS="1")), out))
    for p, _ in procs:
        if p.wait():
            raise SystemExit("an evaluation shard failed")
    parts = [json.loads(out.read_text()) for _, out in procs]
    for name, f in facts.items():
        nll = sum(sum(p[name]["nll"]) for p in parts)
        kld = np.array([x for p in parts for x in p[name]["kld"]])
        agree = np.array([x for p in parts for x in p[name]["agree"]], dtype=float)
        f.update(ppl=float(np.exp(nll / kld.size)), kld_mean=float(kld.mean()), kld_p99=float(np.quantile(kld, 0.99)),
                 top1=float(agree.mean()), tokens_scored=int(kld.size))


def speed(args: argparse.Namespace, facts: dict[str, dict]) -> None:
    """Decode tok/s in interleaved rounds. Each round visits every file once, a peer and the cllm
    file of its size back to back, so per-round ratios compare runs seconds apart (this machine
    drifts by ±30%); reported: the median per file and the median of per-round ratios."""
    from cllm_compiler.backends.gguf_run import LlamaCppModel
    from cllm_compiler.evaluate import tokenize, wikitext_text
    from cllm_compiler.loading import load_model
    ids = tokenize(load_model(args.model).tokenizer, wikitext_text())[:128].tolist()
    order = ["llama.cpp-F16"] + [n for k in args.types for n in (f"llama.cpp-{k}", *_cllm(facts, k),
                                                                  f"llama.cpp-{k}+imatrix")]
    runs: dict[str, list[dict]] = {k: [] for k in order}
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            lm = LlamaCppModel(Path(facts[name]["path"]), n_ctx=512, logits_all=False, kv_type="f16")
            lm.speed(ids[:16], 4)  # warm the weights into the page cache
            runs[name].append(lm.speed(ids, args.new_tokens))
            lm.close()
    dec = {k: np.array([x["decode_tok_s"] for x in v]) for k, v in runs.items()}
    for name, f in facts.items():
        if name not in dec:
            continue  # not re-measured this time: keeps its earlier numbers
        f["decode_tok_s"] = float(np.median(dec[name]))
        f["prefill_tok_s"] = float(np.median([x["prefill_tok_s"] for x in runs[name]]))
        f["decode_vs_f16"] = float(np.median(dec[name] / dec["llama.cpp-F16"]))
        f["decode_runs"] = [round(float(x), 1) for x in dec[name]]
    for k in args.types:
        for c in _cllm(facts, k):
            facts[c]["decode_vs_peer"] = float(np.median(dec[c] / dec[f"llama.cpp-{k}"]))
        facts[f"llama.cpp-{k}+imatrix"]["decode_vs_peer"] = float(np.median(dec[f"llama.cpp-{k}+imatrix"]
                                                                         / dec[f"llama.cpp-{k}"]))


def _cllm(facts: dict[str, dict], kind: str) -> list[str]:
    return [f"{v}@{kind}-size" for v in VARIANTS if f"{v}@{kind}-size" in facts]


def report(args: argparse.Namespace, facts: dict[str, dict]) -> str:
    ref_ppl = facts["llama.cpp-F16"]["ppl"]
    lines = [f"Healed SmolLM2-135M, WikiText-2 test, {args.windows} x {args.seqlen} tokens, all files run in "
             f"llama.cpp (llama-cpp-python, 1 thread, f32 KV for scoring); KLD vs the fp32 torch reference; "
             f"decode tok/s median of {args.rounds} interleaved rounds (128-token prompt, {args.new_tokens} new tokens, "
             f"f16 KV); ratios are medians of per-round ratios.", "",
             "| file | bpw | PPL | ΔPPL | KLD mean | KLD p99 | top-1 | decode tok/s | vs F16 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, f in sorted(facts.items(), key=lambda kv: -kv[1]["bpw"]):
        lines.append(f"| {name} | {f['bpw']:.3f} | {f['ppl']:.3f} | {100 * (f['ppl'] / ref_ppl - 1):+.2f}% | "
                     f"{f['kld_mean']:.5f} | {f['kld_p99']:.4f} | {f['top1']:.4f} | {f['decode_tok_s']:.1f} | "
                     f"{f['decode_vs_f16']:.2f}× |")
    lines += ["", "Goal check at matched size (cllm ≤ the peer's bpw): KLD ratio cllm / llama.cpp (goal < 1), "
              "decode ratio cllm / llama.cpp (goal ≥ 0.95):", "",
              "| size of | cllm variant | cllm bpw | vs plain: KLD ratio | vs +imatrix: KLD ratio | decode ratio vs plain | "
              "noise: +imatrix vs plain decode |",
              "|---|---|---|---|---|---|---|"]
    for kind in [t for t in TYPES if f"llama.cpp-{t}" in facts]:
        p, pi = facts[f"llama.cpp-{kind}"], facts[f"llama.cpp-{kind}+imatrix"]
        for name in _cllm(facts, kind):
            c = facts[name]
            lines.append(f"| {kind} ({p['bpw']:.3f}) | {name.split('@')[0]} | {c['bpw']:.3f} | "
                         f"{c['kld_mean'] / p['kld_mean']:.3f} | {c['kld_mean'] / pi['kld_mean']:.3f} | "
                         f"{c['decode_vs_peer']:.3f} | {pi['decode_vs_peer']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=HEALED)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--new-tokens", type=int, default=128, help="decode tokens per speed run")
    ap.add_argument("--speed-only", action="store_true", help="re-measure speed for the files in --out's json")
    ap.add_argument("--variant", default="cllm", choices=sorted(VARIANTS), help="cllm type set (see VARIANTS)")
    ap.add_argument("--merge", action="store_true", help="evaluate only files not in --out's json, keep the rest")
    ap.add_argument("--work", type=Path, default=Path("bench/results/gguf_work"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/gguf_bench"))
    ap.add_argument("--types", nargs="+", default=TYPES, choices=TYPES, help="llama.cpp types to compare")
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.shard:
        s = json.loads(args.shard)
        return eval_shard(args.model, s["files"], s["windows"], args.seqlen, Path(s["out"]))
    args.work.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
    if args.speed_only:
        facts = old
    else:
        facts = prepare(args)
        new = {k: v for k, v in facts.items() if k not in old or not args.merge}
        evaluate(args, new)
        facts = {**old, **new} if args.merge else facts
    speed(args, facts)
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=1))
    args.out.with_suffix(".md").write_text(report(args, facts))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
