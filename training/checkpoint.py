"""A compiled model as a reusable checkpoint: the same HF folder + compression.json that
`cllm-train` exports (`export.py`), written from the IR after the passes, so a model trained by
`reconstruct` / `distill` (or any post-training plan on cllm's grid) can be reloaded, compiled for
another target or read by any Hugging Face tool without re-fitting (`load_compression` reads it
back into the same codes and scales; the HF weights are their decoded values).

Only grids `load_compression` can rebuild exactly are written: uniform `quant` tensors (int zero
points, fp16 mins or symmetric) and float tensors; anything else is refused by name.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import atomic_dir
from ..errors import TrainError
from ..ir import Model
from ..load_compression import FORMAT, VERSION
from ..reprs import Dense, Encoded, Quantized




def export_ir(model: Model, out: Path, force: bool = False) -> dict:
    """Write `model` (an IR after the passes) as an HF folder + compression.json; returns the spec."""
    from safetensors.torch import save_file
    from ..backends.torch_ref import hf_config
    weights, extra, spec = {}, {}, {}
    for node in model:
        rep = node.rep.inner() if isinstance(node.rep, Encoded) else node.rep
        if isinstance(rep, Quantized):
            zero = "sym" if rep.symmetric else "float" if rep.mins is not None else "int"
            spec[node.name] = {"format": "quant", "bits": rep.bits, "group": rep.group, "sym": zero == "sym",
                               "zero": "int" if zero == "sym" else zero, "nm": None}
            extra[f"{node.name}.scales"] = torch.from_numpy(rep.scales.astype("float16"))
            if zero == "int":
                extra[f"{node.name}.zeros"] = torch.from_numpy(rep.zeros.astype("uint8"))
            elif zero == "float":
                extra[f"{node.name}.mins"] = torch.from_numpy(rep.mins.astype("float16"))
        elif not isinstance(rep, Dense):
            raise TrainError(f"a {rep.describe()} tensor cannot be written as a checkpoint yet", tensor=node.name,
                                  hint="checkpoints hold uniform quant grids and float tensors; drop --checkpoint "
                                       "or compile with quant/gptq only")
        weights[node.name] = rep.decode().to(torch.float32).contiguous()
    config = hf_config(model.config)
    from ..load_hf import ARCH_BY_CLASS  # the loader's own table, read backwards
    config.architectures = [next(c for c, a in ARCH_BY_CLASS.items() if a == model.config.arch)]
    doc = {"format": FORMAT, "version": VERSION, "tensors": spec}
    with atomic_dir(out, force=force) as tmp:
        config.save_pretrained(tmp)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_file({k: v.contiguous() for k, v in sorted(extra.items())}, str(tmp / "compression.safetensors"))
        (tmp / "compression.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        if model.tokenizer is not None:
            (tmp / "tokenizer.json").write_text(model.tokenizer.tokenizer_json)
            tcfg = {"add_bos_token": model.tokenizer.add_bos}
            if model.tokenizer.chat_template is not None:
                tcfg["chat_template"] = model.tokenizer.chat_template
            (tmp / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1, sort_keys=True) + "\n")
    return doc
