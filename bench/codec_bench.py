"""Issue 3 benchmark: rANS rate vs entropy, codec decode throughput, size/quality vs llama.cpp.

    python bench/codec_bench.py [--model PATH] [--windows 8] [--runs 5]

1. Compiles the model at int4 g128 and int3 g128 with entropy{codec=auto} and sums, over all
   rans-coded code buffers, the order-0 entropy vs the stored bits per index.
2. Decode throughput per core (one thread) of zstd and rans on those code buffers
   (median of --runs, interleaved), in decoded MB/s.
3. File size of cllm int4 g128 vs llama.cpp's Q4_0 and Q4_K_M of the same GGUF (made with
   llama_model_quantize), and PPL/KLD of all three on --windows WikiText-2 windows through
   the same torch evaluator (GGUF dequantized by gguf-py).
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

os.environ.setdefault("OMP_NUM_THREADS", "1")

HEALED = Path(__file__).resolve().parents[2] / "shared/models/smollm2-135m-instruct-healed.Q8_0.gguf"
PIPES = {"int4-g128": "quant{bits=4,group=128},quant{bits=8,group=128,match=embed},entropy{codec=auto}",
         "int3-g128": "quant{bits=3,group=128},quant{bits=8,group=128,match=embed},entropy{codec=auto}"}
LLAMA = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = 1; p.allow_requantize = True
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def compile_art(model: str, pipe: str, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "cllm_compiler.cli.compile", model, "-p", pipe, "-o", str(out),
                    "--eval-windows", "0", "--force"], check=True, stdout=subprocess.DEVNULL)


def rate_and_speed(art: Path, runs: int) -> dict:
    from cllm_compiler.codecs import BufferSpec, get_codec
    from cllm_compiler.codecs.rans import FrequencyTable
    from cllm_compiler.container import ContainerFile
    cf = ContainerFile(art / "model.cllm")
    ent_bits = stored_bits = n = 0.0
    bufs = []
    for rec in cf.header["tensors"]:
        coded = cf.coded(rec)
        c = coded.get("codes")
        if c is None or c.codec != "rans":
            continue
        count = rec["shape"][0] * rec["shape"][1]
        bits = rec["meta"]["bits"]
        ent_bits += FrequencyTable(tuple(c.params["freq"])).entropy_bits() * count
        stored_bits += len(c.data) * 8
        n += count
        spec = BufferSpec("codes", bits, count)
        raw = get_codec("rans").decode(c.data, c.raw_len, spec, c.params)
        z, zp = get_codec("zstd").encode(raw, spec)
        bufs.append((spec, raw, c, z, zp))
    times: dict[str, list[float]] = {"rans": [], "zstd": []}
    total_raw = sum(len(b[1]) for b in bufs)
    for _ in range(runs):
        for name in ("rans", "zstd"):
            t0 = time.perf_counter()
            for spec, raw, c, z, zp in bufs:
                if name == "rans":
                    get_codec("rans").decode(c.data, c.raw_len, spec, c.params)
                else:
                    get_codec("zstd").decode(z, len(raw), spec, zp)
            times[name].append(time.perf_counter() - t0)
    return {"indices": int(n), "entropy_bits_per_index": ent_bits / n, "rans_bits_per_index": stored_bits / n,
            "rans_over_entropy": stored_bits / ent_bits,
            "zstd_bits_per_index": sum(len(b[3]) for b in bufs) * 8 / n,
            "decode_MBps_per_core": {k: total_raw / statistics.median(v) / 1e6 for k, v in times.items()},
            "decoded_MB": total_raw / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(HEALED) if HEALED.exists() else None)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/results/codec_bench.json"))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from cllm_compiler.default_model import default_model_path
    model = args.model or str(default_model_path())
    work = Path(tempfile.mkdtemp(prefix="cllm-codec-"))
    res: dict = {"model": model, "rate": {}}
    for name, pipe in PIPES.items():
        compile_art(model, pipe, work / name)
        res["rate"][name] = rate_and_speed(work / name, args.runs)
        res["rate"][name]["file_bytes"] = (work / name / "model.cllm").stat().st_size
    sizes = {"cllm-int4-g128": (work / "int4-g128" / "model.cllm").stat().st_size}
    for label, ftype in (("Q4_0", 2), ("Q4_K_M", 15)):
        out = work / f"{label}.gguf"
        subprocess.run([sys.executable, "-c", LLAMA, model, str(out), str(ftype)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sizes[label] = out.stat().st_size
    res["sizes"] = sizes
    res["size_ratio_vs"] = {k: sizes["cllm-int4-g128"] / v for k, v in sizes.items() if k != "cllm-int4-g128"}
    if args.windows:
        from cllm_compiler.backends.torch_ref import build_torch_model
        from cllm_compiler.evaluate import evaluate, tokenize, wikitext_text
        from cllm_compiler.loading import load_model
        src = load_model(model)
        nets = {"source": build_torch_model(src)}
        nets["cllm-int4-g128"] = build_torch_model(load_model(work / "int4-g128"))
        for label in ("Q4_0", "Q4_K_M"):
            nets[label] = build_torch_model(load_model(work / f"{label}.gguf"))
        ids = tokenize(src.tokenizer, wikitext_text())
        ev = evaluate(nets, ids, reference=nets["source"], max_windows=args.windows)
        res["quality"] = {k: v.to_dict() for k, v in ev.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
