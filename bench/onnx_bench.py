"""cllm's ONNX export vs onnxruntime's own MatMulNBitsQuantizer, side by side on one fp export.

  python bench/onnx_bench.py                       # SmolLM2, int4 block 32, ~15 CPU-minutes
  python bench/onnx_bench.py --windows 8 --rounds 7

The fp model is exported once by cllm (`cast{dtype=f32}` for onnx-cpu: plain MatMuls); each of
onnxruntime's quantizer configurations (its default blockwise RTN, HQQ, RTN, GPTQ, k-quant: the
ones whose dependencies are installed; the others are listed with the reason) quantizes that
file; cllm's variants (RTN, clipping search, calibrated GPTQ) are compiled from the same model.
All quantize the 210 decoder linears at 4 bits, block 32, asymmetric, and leave the tied
embedding / head in f32, so the file sizes compare like for like. Each file runs in onnxruntime
(one thread): PPL and KLD against the torch fp32 model on the same WikiText-2 windows, bits per
weight from the file bytes, decode latency as the median of interleaved rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cllm_compiler.backends.onnx_run import OrtModel  # noqa: E402
from cllm_compiler.backends.torch_ref import build_torch_model  # noqa: E402
from cllm_compiler.compiler import compile_model  # noqa: E402
from cllm_compiler.default_model import default_model_path  # noqa: E402
from cllm_compiler.evaluate import tokenize, wikitext_text  # noqa: E402
from cllm_compiler.loading import load_model  # noqa: E402
from cllm_compiler.pipeline import parse_pipeline  # noqa: E402
from cllm_compiler.targets import get_target  # noqa: E402

CLLM = {"cllm RTN": "quant{bits=4,group=32},entropy",
        "cllm RTN+search": "quant{bits=4,group=32,search=true},entropy",
        "cllm GPTQ": "calibrate,gptq{bits=4,group=32},entropy"}


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader
    return CalibrationDataReader


class CalibReader(_reader_base()):
    """onnxruntime's calibration interface over the text cllm's `calibrate` uses (the packaged
    book, never WikiText): 8 sequences of 256 tokens, each a prefill with an empty KV cache."""

    def __init__(self, model, layers: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        from cllm_compiler.evaluate import tokenize
        from cllm_compiler.training.train import text_files
        ids = tokenize(model.tokenizer, text_files(())[0].read_text()[:200000])
        empty = np.zeros((layers, 1, kv_heads, 0, head_dim), np.float32)
        self.items = iter([{"input_ids": ids[i * 256:(i + 1) * 256][None].numpy(), "past_keys": empty,
                            "past_values": empty.copy()} for i in range(8)])

    def get_next(self):
        return next(self.items, None)

    def rewind(self) -> None:
        pass


def ort_configs(reader):
    import onnxruntime.quantization.matmul_nbits_quantizer as q
    return {"ORT default (blockwise RTN)": lambda: q.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False),
            "ORT HQQ": lambda: q.HQQWeightOnlyQuantConfig(block_size=32, bits=4),
            "ORT RTN": lambda: q.RTNWeightOnlyQuantConfig(),
            "ORT GPTQ": lambda: q.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader(), block_size=32),
            "ORT k-quant": lambda: q.KQuantWeightOnlyQuantConfig()}


def ort_quantize(fp: Path, out: Path, make_cfg, head: str) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    model = onnx.load(str(fp))
    cfg = make_cfg()
    qz = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=False, nodes_to_exclude=[head], algo_config=cfg)
    qz.process()
    out.mkdir(parents=True, exist_ok=True)
    qz.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True)
    (out / "onnx.json").write_text((fp.parent / "onnx.json").read_text())


def onnx_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/results/onnx_bench"))
    args = ap.parse_args()
    src = args.model or default_model_path()
    work = Path(tempfile.mkdtemp(prefix="onnx_bench."))
    t0 = time.perf_counter()
    compile_model(src, get_target("onnx-cpu"), parse_pipeline("cast{dtype=f32}"), work / "fp")
    fp = work / "fp" / "onnx" / "model.onnx"
    import onnx
    graph = onnx.load(str(fp), load_external_data=False).graph
    head = next(n.name for n in graph.node if n.op_type == "MatMul" and n.output[0] == graph.output[0].name)
    folders, notes = {"fp32 export": work / "fp" / "onnx"}, {}
    src_model = load_model(src)
    c = src_model.config
    reader = lambda: CalibReader(src_model, c.num_layers, c.num_kv_heads, c.head_dim)  # noqa: E731
    for name, make in ort_configs(reader).items():
        try:
            ort_quantize(fp, work / name.replace(" ", "_"), make, head)
            folders[name] = work / name.replace(" ", "_")
        except Exception as e:  # noqa: BLE001 - a peer config that cannot run is reported, not fatal
            notes[name] = f"not run: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            print(name, notes[name], flush=True)
    for name, pipe in CLLM.items():
        art = work / name.replace(" ", "_").replace("+", "_")
        compile_model(src, get_target("onnx-cpu"), parse_pipeline(pipe), art)
        folders[name] = art / "onnx"
    print(f"prepared {len(folders)} files in {time.perf_counter() - t0:.0f} s", flush=True)
    ref_model = load_model(src)
    ids = tokenize(ref_model.tokenizer, wikitext_text())
    ref = build_torch_model(ref_model)
    wins = [ids[i * args.seqlen:(i + 1) * args.seqlen] for i in range(args.windows)]
    with torch.inference_mode():
        ref_lp = [torch.log_softmax(ref(w[None]).logits[0].double(), -1) for w in wins]
    params = ref_model.num_params
    rows = {}
    for name, folder in folders.items():
        m = OrtModel(folder)
        nll, kld, top1 = [], [], []
        for w, lp in zip(wins, ref_lp):
            q = torch.log_softmax(m(w[None]).logits[0].double(), -1)
            nll.append(-q[:-1].gather(1, w[1:, None]).mean().item())
            kld.append((lp.exp() * (lp - q)).sum(-1).mean().item())
            top1.append((lp.argmax(-1) == q.argmax(-1)).double().mean().item())
        rows[name] = {"bpw": round(onnx_bytes(folder) * 8 / params, 4), "ppl": round(float(np.exp(np.mean(nll))), 4),
                      "kld": round(float(np.mean(kld)), 5), "top1": round(float(np.mean(top1)), 4), "decode_ms": []}
        print(name, json.dumps(rows[name]), flush=True)
    models = {name: OrtModel(folder) for name, folder in folders.items()}
    prompt = ids[:64].tolist()
    for _ in range(args.rounds):  # interleaved: every file once per round
        for name, m in models.items():
            rows[name]["decode_ms"].append(1000 / m.speed(prompt, 16)["decode_tok_s"])
    for r in rows.values():
        r["decode_ms_median"] = round(statistics.median(r.pop("decode_ms")), 2)
    res = {"model": str(src), "windows": args.windows, "seqlen": args.seqlen, "rounds": args.rounds,
           "rows": rows, "not_run": notes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
