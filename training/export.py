"""Export a compression-aware model: an HF folder `cllm-compile` turns into its IR exactly.

The folder is a plain Hugging Face checkpoint (config.json, model.safetensors, tokenizer files)
whose decoder linears hold the dequantized values of their stored form — any HF tool loads it
and computes what the trained model computed — plus `compression.json` (per tensor: bits, group,
symmetry, N:M) and `compression.safetensors` (fp16 scales, int zero points, packed masks), which
`cllm_compiler.load_compression` reads back into `Quantized` / `Sparse(mask, Quantized)` with no
re-fitting. The folder appears atomically (written beside, renamed when complete).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_dir
from ..load_compression import FORMAT, VERSION
from .fakecodebook import CodebookQuantizer
from .fakelowrank import LowRankQuantizer
from .fakequant import WeightQuantizer
from .qat import latent, quantized_linears

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


@torch.no_grad()
def export(model: nn.Module, quantizers: dict[str, WeightQuantizer | CodebookQuantizer | LowRankQuantizer], out: Path, bits: int | None = None,
           source: Path | None = None, force: bool = False) -> dict:
    """Write the checkpoint at `bits` (default: each layer's largest choice); returns the spec."""
    from safetensors.torch import save_file
    lins = quantized_linears(model)
    weights, extra, spec = {}, {}, {}
    for name, wq in quantizers.items():
        w = latent(lins[name])
        if isinstance(wq, CodebookQuantizer):
            weights[name] = wq(w).contiguous()
            parts = wq.parts(w)
            extra |= {f"{name}.{k}": v.contiguous() for k, v in parts.items()}
            extra[f"{name}.codes"] = parts["codes"].to(torch.uint8).contiguous()
            spec[name] = {"format": "codebook", "bits": wq.kbits, "d": wq.d, "scope": wq.scope, "group": wq.group}
            continue
        weights[name], parts, b = _at_bits(wq, w, bits, name)
        grid = wq.base if isinstance(wq, LowRankQuantizer) else wq
        extra |= _grid_arrays(name, parts, grid.zero)
        if isinstance(wq, LowRankQuantizer):  # codes are not recoverable from U V + R: store them
            extra |= {f"{name}.{k}": parts[k].contiguous() for k in ("U", "V")}
            extra[f"{name}.codes"] = parts["codes"].to(torch.uint8).contiguous()
        if "mask" in parts:
            packed = np.packbits(parts["mask"].cpu().numpy(), axis=1, bitorder="little")
            extra[f"{name}.mask"] = torch.from_numpy(packed)
        fmt = "lowrank" if isinstance(wq, LowRankQuantizer) else "sparse+quant" if wq.nm else "quant"
        spec[name] = {"format": fmt, "bits": b, "group": grid.group, "sym": grid.sym, "zero": grid.zero,
                      "nm": list(wq.nm) if wq.nm else None} | ({"rank": wq.rank} if fmt == "lowrank" else {})
    sd = {}
    for k, v in model.state_dict().items():
        if ".parametrizations." in k:
            continue
        sd[k] = v
    sd |= weights
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)  # tied: stored once, as the embedding
    doc = {"format": FORMAT, "version": VERSION, "tensors": spec}
    if not getattr(model.config, "architectures", None):  # built from a config (cllm's loaders), not a hub folder
        model.config.architectures = [type(model).__name__]
    with atomic_dir(out, force=force) as tmp:
        model.config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_file(extra, str(tmp / "compression.safetensors"))
        (tmp / "compression.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        for f in TOKENIZER_FILES:
            if source is not None and (source / f).is_file():
                shutil.copyfile(source / f, tmp / f)
    return doc


def _at_bits(wq: WeightQuantizer | LowRankQuantizer, w: torch.Tensor, bits: int | None,
             name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """(stored weight, parts, bit-width) at `bits` (default: the largest trained choice)."""
    if bits is not None and bits not in wq.choices:
        raise ValueError(f"{name} was trained for bits {wq.choices}, not {bits}")
    b = bits or max(wq.choices)
    old, wq.bits = wq.bits, b
    try:
        return wq(w).contiguous(), wq.parts(w, b), b  # exactly the forward the model trained with
    finally:
        wq.bits = old


def _grid_arrays(name: str, parts: dict[str, torch.Tensor], zero: str) -> dict[str, torch.Tensor]:
    """fp16 scales, plus int zero points or fp16 mins as the grid has them (none when symmetric)."""
    out = {f"{name}.scales": parts["scales"].half().contiguous()}
    if zero == "int":
        out[f"{name}.zeros"] = parts["zeros"].to(torch.uint8).contiguous()
    elif zero == "float":
        out[f"{name}.mins"] = parts["mins"].half().contiguous()
    return out
