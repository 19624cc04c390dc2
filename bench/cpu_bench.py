"""CPU benchmark (issue 18): cllm's TVM package for this CPU's ISA (and every x86 ISA it runs)
against llama.cpp on the same healed SmolLM2, at 1 and 2 threads.

Files (same model, WikiText-2 never used for calibration):
  cllm-<isa>       `calibrate,gptq{bits=4,group=128},quant{bits=8,match=embed},entropy` lowered to the
                   TVM package of each x86 target this host runs (one model.cllm, one package per ISA)
  cllm-gguf        the same IR as a GGUF (each tensor as llama.cpp's nearest type), run in llama.cpp
  llama.cpp-Q4_0, llama.cpp-Q4_K_M   llama-quantize of an F16 GGUF of the same model

Speed: decode tok/s at batch 1 (64 new tokens after a 128-token prompt) and prefill tok/s of a
512-token prompt; for each thread count, --rounds interleaved rounds (order reversed every other
round), each file opened fresh in its round; medians, and ratios as medians of per-round ratios.
Quality: PPL / KLD / top-1 vs the fp32 torch reference on --windows x --seqlen WikiText-2 tokens
(TVM through its fp32 prefill path) and, for the TVM packages, the KLD of the int8-activation
decode path token by token on --decode-tokens tokens.

    python bench/cpu_bench.py [--rounds 5] [--threads 1,2] [--windows 2]
writes bench/results/cpu_bench.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]
HEALED = ROOT.parent / "shared/models/smollm2-135m-instruct-healed.Q8_0.gguf"
PIPE = "calibrate,gptq{bits=4,group=128},quant{bits=8,group=128,match=embed},entropy{codec=zstd}"
PEERS = ["Q4_0", "Q4_K_M"]
LUT = "codebook{bits=4,scope=row},quant{bits=8,group=128,match=embed},entropy{codec=zstd}"


def isas() -> list[str]:
    from cllm_compiler.targets.host import host_flags, host_targets, missing_flags
    flags = host_flags()
    return [t.name for t in host_targets() if not missing_flags(t, flags)]


def prepare(args: argparse.Namespace) -> dict[str, dict]:
    import shutil
    import subprocess

    from tvm_bench import llama_peers
    from cllm_compiler.backends.gguf_writer import write_gguf
    from cllm_compiler.backends.tvm_backend import lower_artifact
    from cllm_compiler.container import read_container
    from cllm_compiler.loading import load_model
    from cllm_compiler.targets import get_target
    work, facts = args.work, {}
    n_params = load_model(args.model).num_params
    art = work / "cllm-gptq-int4-g128"
    if not (art / "model.cllm").exists():
        subprocess.run([sys.executable, "-m", "cllm_compiler.cli.compile", str(args.model), "-t", "x86-avx2", "-p", PIPE,
                        "-o", str(art), "--eval-windows", "0", "--no-lower", "--force"], check=True)
    ir = read_container(art / "model.cllm")
    size = (art / "model.cllm").stat().st_size
    for isa in isas():  # the package always comes from the current kernels and schedules
        folder = work / f"cllm-{isa}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        low = lower_artifact(ir, folder, get_target(isa))
        facts[f"cllm-{isa}"] = {"path": str(folder / "tvm"), "kind": "tvm", "bytes": size, "bpw": size * 8 / n_params,
                                "kernels": low["tensor_types"], "decode_activations": json.loads(
                                    (folder / "tvm" / "tvm.json").read_text())["decode_activations"]}
    own = work / "cllm-same-ir.gguf"
    if not own.exists():
        w = write_gguf(ir, own, inexact="requant")
        facts["_own_gguf_types"] = w.tensor_types
    facts["cllm-gguf"] = {"path": str(own), "kind": "gguf", "bytes": own.stat().st_size,
                          "bpw": own.stat().st_size * 8 / n_params}
    facts.update(llama_peers(args.model, work, PEERS, n_params))
    return facts


def open_model(f: dict, n_ctx: int, threads: int, scoring: bool = False):
    """A runner; `scoring`: llama.cpp keeps every position's logits and an f32 KV cache (quality),
    else its defaults as a user runs it (speed)."""
    if f["kind"] == "tvm":
        from cllm_compiler.backends.tvm_run import TvmModel
        return TvmModel(Path(f["path"]), threads=threads)
    from cllm_compiler.backends.gguf_run import LlamaCppModel
    if scoring:
        return LlamaCppModel(Path(f["path"]), n_ctx=n_ctx, threads=threads)
    return LlamaCppModel(Path(f["path"]), n_ctx=n_ctx, threads=threads, logits_all=False, kv_type="f16")


def quality(args: argparse.Namespace, facts: dict[str, dict]) -> None:
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.evaluate import evaluate, tokenize, wikitext_text
    from cllm_compiler.loading import load_model
    model = load_model(args.model)
    ids = tokenize(model.tokenizer, wikitext_text())
    ref = build_torch_model(model)
    names = [k for k in facts if not k.startswith("_")]
    runners = {k: open_model(facts[k], args.seqlen, 1, scoring=True) for k in names}
    res = evaluate({"reference": ref, **runners}, ids, reference=ref, seqlen=args.seqlen, max_windows=args.windows)
    for k in names:
        facts[k].update({m: getattr(res[k], m) for m in ("ppl", "kld_mean", "top1_agree")})
        runners[k].close()
    facts["_reference"] = {"ppl": res["reference"].ppl, "tokens": args.windows * args.seqlen}
    facts["_correctness"] = correctness(args, ids)


def correctness(args: argparse.Namespace, ids: Any) -> dict[str, dict]:
    """Each ISA's package vs the torch reference of the *same IR* on --decode-tokens WikiText-2
    tokens, for the int4 g128 file and a codebook file: evaluation (fp32 prefill_all) and the
    generation path (int8 prefill of the first token, then int8 decode token by token)."""
    import shutil
    import subprocess

    import torch

    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.backends.tvm_backend import lower_artifact
    from cllm_compiler.backends.tvm_run import TvmModel
    from cllm_compiler.container import read_container
    from cllm_compiler.targets import get_target
    from cllm_compiler.validate import compare_logits
    gptq = args.work / "cllm-gptq-int4-g128"
    lut = args.work / "cllm-lut4-row"
    if not (lut / "model.cllm").exists():
        subprocess.run([sys.executable, "-m", "cllm_compiler.cli.compile", str(args.model), "-t", "x86-avx2", "-p",
                        f"calibrate{{cache={gptq}}},{LUT}", "-o", str(lut), "--eval-windows", "0", "--no-lower",
                        "--force"], check=True)
    n, out = args.decode_tokens, {}
    seq = ids[:n]
    for name, art in (("int4-g128", gptq), ("lut4-row", lut)):
        ir = read_container(art / "model.cllm")
        with torch.inference_mode():
            want = build_torch_model(ir)(seq[None]).logits[0]
        for isa in isas():
            folder = args.work / f"check-{name}-{isa}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            lower_artifact(ir, folder, get_target(isa))
            tm = TvmModel(folder / "tvm", threads=1)
            full = compare_logits(want, torch.from_numpy(tm.logits(seq.tolist())), seq)
            steps = [torch.from_numpy(tm._run("prefill", [int(seq[0])], 0)[0])]
            steps += [torch.from_numpy(tm._run("decode", [int(seq[p])], p)[0]) for p in range(1, n)]
            gen = compare_logits(want, torch.stack(steps), seq)
            out[f"{name} {isa}"] = {
                "tokens": n, "eval_top1": full["top1_agree"], "eval_kld": full["kld_mean"],
                "eval_ppl_ratio": full["ppl_device"] / full["ppl_torch"], "gen_top1": gen["top1_agree"],
                "gen_kld": gen["kld_mean"], "gen_ppl_ratio": gen["ppl_device"] / gen["ppl_torch"],
                "decode_activations": tm.manifest.get("decode_activations")}
            tm.close()
            print(name, isa, out[f"{name} {isa}"], flush=True)
    return out


def speed(args: argparse.Namespace, facts: dict[str, dict], threads: int) -> dict[str, dict]:
    from cllm_compiler.evaluate import tokenize, wikitext_text
    from cllm_compiler.loading import load_model
    ids = tokenize(load_model(args.model).tokenizer, wikitext_text())[:512].tolist()
    names = [k for k in facts if not k.startswith("_")]
    dec: dict[str, list[float]] = {k: [] for k in names}
    pre: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            lm = open_model(facts[name], 1024, threads)
            lm.speed(ids[:16], 4)  # warm-up: weights into the page cache, thread pools started
            pre[name].append(lm.speed(ids[:512], 0)["prefill_tok_s"])
            dec[name].append(lm.speed(ids[:128], args.new_tokens)["decode_tok_s"])
            lm.close()
        print(f"threads {threads} round {r + 1}/{args.rounds}", flush=True)
    out = {}
    for k in names:
        d, p = np.array(dec[k]), np.array(pre[k])
        row = {"decode_tok_s": float(np.median(d)), "prefill_tok_s": float(np.median(p)),
               "decode_runs": [round(float(x), 1) for x in d], "prefill_runs": [round(float(x), 1) for x in p]}
        for peer in ("llama.cpp-Q4_0", "llama.cpp-Q4_K_M", "cllm-gguf"):
            row[f"decode_vs_{peer}"] = float(np.median(d / np.array(dec[peer])))
            row[f"prefill_vs_{peer}"] = float(np.median(p / np.array(pre[peer])))
        out[k] = row
    return out


def report(facts: dict[str, dict], runs: dict[str, dict], args: argparse.Namespace, machine: dict) -> str:
    ref = facts["_reference"]
    lines = [f"Healed SmolLM2-135M on {machine['cpu']} ({machine['cores']} vCPUs; flags: {machine['flags']}). "
             f"Quality on {args.windows} x {args.seqlen} WikiText-2 tokens vs the fp32 torch reference (PPL "
             f"{ref['ppl']:.3f}); decode tok/s: {args.new_tokens} tokens after a 128-token prompt; prefill tok/s: "
             f"a 512-token prompt; medians of {args.rounds} interleaved rounds, ratios = medians of per-round ratios.", "",
             "| file | bpw (file) | PPL | KLD | top-1 |", "|---|---|---|---|---|"]
    for k, f in facts.items():
        if not k.startswith("_"):
            lines.append(f"| {k} | {f['bpw']:.3f} | {f['ppl']:.3f} | {f['kld_mean']:.4f} | {f['top1_agree']:.4f} |")
    cor = facts.get("_correctness", {})
    if cor:
        lines += ["", f"TVM vs the torch reference of the same IR, {next(iter(cor.values()))['tokens']} WikiText-2 "
                  "tokens: evaluation path (fp32) and generation path (int8 prefill + int8 decode, token by token)", "",
                  "| file, ISA | eval top-1 | eval KLD | eval PPL ratio | gen top-1 | gen KLD | gen PPL ratio |",
                  "|---|---|---|---|---|---|---|"]
        for k, c in cor.items():
            lines.append(f"| {k} | {c['eval_top1']:.4f} | {c['eval_kld']:.2e} | {c['eval_ppl_ratio']:.5f} | "
                         f"{c['gen_top1']:.4f} | {c['gen_kld']:.4f} | {c['gen_ppl_ratio']:.4f} |")
    for t, rows in runs.items():
        lines += ["", f"**{t} thread(s)**", "",
                  "| file | decode tok/s | vs Q4_0 | vs Q4_K_M | vs cllm-gguf | prefill tok/s | vs Q4_0 | vs Q4_K_M | vs cllm-gguf |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k, r in rows.items():
            lines.append(f"| {k} | {r['decode_tok_s']:.1f} | {r['decode_vs_llama.cpp-Q4_0']:.2f}x | "
                         f"{r['decode_vs_llama.cpp-Q4_K_M']:.2f}x | {r['decode_vs_cllm-gguf']:.2f}x | "
                         f"{r['prefill_tok_s']:.1f} | {r['prefill_vs_llama.cpp-Q4_0']:.2f}x | "
                         f"{r['prefill_vs_llama.cpp-Q4_K_M']:.2f}x | {r['prefill_vs_cllm-gguf']:.2f}x |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    from cllm_compiler.measure import _cpu_model
    from cllm_compiler.targets.host import read_flags
    simd = sorted(f for f in read_flags() if f.startswith(("avx", "fma", "f16c", "amx")))
    hidden = os.environ.get("CLLM_HIDE_CPU_FLAGS", "")
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "flags": " ".join(simd) + (f" (hidden from cllm: {hidden})" if hidden else ""),
            "machine": platform.machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=HEALED)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "cpu_work")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--decode-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--skip-quality", action="store_true", help="keep quality numbers from the last results")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    os.environ.setdefault("TVM_NUM_THREADS", str(max(threads)))  # the pool's size, fixed at its start
    args.work.mkdir(parents=True, exist_ok=True)
    res = ROOT / "bench" / "results"
    facts = prepare(args)
    old = json.loads((res / "cpu_bench.json").read_text()) if args.skip_quality else None
    if old:
        for k, f in facts.items():
            if k in old["files"] and not k.startswith("_"):
                f.update({m: old["files"][k][m] for m in ("ppl", "kld_mean", "top1_agree") if m in old["files"][k]})
        facts["_reference"] = old["files"]["_reference"]
        facts["_correctness"] = old["files"].get("_correctness", {})
    else:
        quality(args, facts)
        (res / "cpu_bench.json").write_text(json.dumps({"machine": machine(), "files": facts, "speed": {}}, indent=1))
    runs = {str(t): speed(args, facts, t) for t in threads}
    mach = machine()
    (res / "cpu_bench.json").write_text(json.dumps({"machine": mach, "files": facts, "speed": runs}, indent=1))
    text = report(facts, runs, args, mach)
    (res / "cpu_bench.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
