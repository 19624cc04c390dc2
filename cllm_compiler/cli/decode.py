"""cllm-decode: turn a .cllm artifact back into safetensors (an HF folder) or GGUF."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from .ui import console, run_cli, step

EPILOG = """\
examples:
  cllm-decode out/smollm2-x86-avx512 --to safetensors -o smollm2-hf/
  cllm-decode out/smollm2-gguf-cpu --to gguf -o smollm2.gguf
safetensors: every tensor decoded to --dtype (f32 = bit-exact with the IR's decode).
gguf: tensors whose format is a GGUF type (ggml-pass K/i-quants; int8/int4/int5 g32 as
Q8_0/Q4_0/Q4_1/Q5_0/Q5_1; f32/f16/bf16) are written bit-exactly, the same bytes the gguf
backend writes at compile time. Others follow --inexact: 'requant' (default) picks per tensor
the GGUF type with least error no larger than the tensor's own bits; f32/f16/bf16 dequantize.
Each inexact tensor is listed with its extra error.
"""


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="cllm-decode", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", help="artifact folder or .cllm file")
    ap.add_argument("--to", required=True, choices=("safetensors", "gguf"))
    ap.add_argument("--dtype", default="f32", choices=("f32", "f16", "bf16"), help="safetensors dtype")
    ap.add_argument("--inexact", default="requant", choices=("requant", "f32", "f16", "bf16"),
                    help="gguf: what to do with tensors no GGUF type holds exactly")
    ap.add_argument("-o", "--out", type=Path, required=True, help="output folder (safetensors) or file (gguf)")
    ap.add_argument("--force", action="store_true", help="replace an existing output")
    args = ap.parse_args(argv)
    from ..atomic import atomic_dir, atomic_path
    from ..errors import OutputError
    from ..loading import load_model
    model = load_model(args.artifact)
    step(f"decoding {len(model.tensors)} tensors to {args.to}")
    if args.to == "safetensors":
        with atomic_dir(args.out, force=args.force) as tmp:
            _safetensors(model, tmp, args.dtype)
    else:
        if args.out.exists() and not args.force:
            raise OutputError(f"{args.out} already exists", hint="use --force to replace it")
        from ..backends.gguf_writer import write_gguf
        with atomic_path(args.out) as tmp:
            written = write_gguf(model, tmp, inexact=args.inexact)
        for n in written.notes:
            console.print(f"[yellow]note:[/] {n}", highlight=False, soft_wrap=True)
    console.print(f"[green]written:[/] {args.out}", highlight=False)
    return 0


def _safetensors(model, folder: Path, dtype: str) -> None:
    from safetensors.torch import save_file

    from ..backends.torch_ref import hf_config
    from ..reprs import DTYPES
    tensors = {n.name: n.rep.decode().to(DTYPES[dtype][0]).contiguous() for n in model}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt", "producer": "cllm-decode"})
    cfg = hf_config(model.config)
    cfg.architectures = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                          "qwen2": "Qwen2ForCausalLM"}[model.config.arch]]
    cfg.save_pretrained(folder)
    if model.tokenizer is not None:
        (folder / "tokenizer.json").write_text(model.tokenizer.tokenizer_json)
        tc = {"add_bos_token": model.tokenizer.add_bos, "tokenizer_class": "PreTrainedTokenizerFast"}
        if model.tokenizer.chat_template:
            tc["chat_template"] = model.tokenizer.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(tc, indent=1))
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
