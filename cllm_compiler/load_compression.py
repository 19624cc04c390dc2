"""Read a compression-aware checkpoint's `compression.json`: the formats training learned.

`cllm-train` exports a Hugging Face folder whose linear weights are already the dequantized
values of their stored form, plus `compression.json` (per tensor: format, bits, group, symmetry,
N:M pattern) and `compression.safetensors` (the learned fp16 scales, integer zero points and
packed N:M masks). Here each such weight becomes its IR representation *without re-fitting*:
codes are recovered as round(w / scale) + zero, which is exact because w = (code - zero) * scale
was computed in float32 from the same numbers, and the result is checked to decode to w bit for
bit, so the compiled artifact computes what the trained model computed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import LoadError
from .ir import Model
from .safeio import MiB, read_json, regular_file
from .reprs import Quantized
from .reprs_codebook import Codebook
from .reprs_lowrank import LowRank
from .reprs_sparse import Sparse

FORMAT = "cllm-compression"
VERSION = 1


def read_spec(folder: Path) -> dict[str, Any]:
    spec = read_json(folder / "compression.json", 64 * MiB, inside=folder)
    if spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise LoadError(f"{folder / 'compression.json'} is not a {FORMAT} v{VERSION} file",
                        hint="export it again with this cllm's cllm-train")
    tensors = spec.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(t, dict) for t in tensors.values()):
        raise LoadError(f"{folder / 'compression.json'}: 'tensors' is not a mapping of tensor records",
                        hint="export it again with this cllm's cllm-train")
    return spec


def apply_compression(model: Model, folder: Path) -> int:
    """Replace the dense reps of every tensor compression.json names; returns how many."""
    from safetensors import safe_open
    spec = read_spec(folder)
    nodes = {n.name: n for n in model}
    from safetensors import SafetensorError
    try:
        with safe_open(str(regular_file(folder / "compression.safetensors", inside=folder)), framework="pt") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise LoadError(f"cannot read compression.safetensors: {str(e)[:120]}",
                        hint="the export is damaged; export it again") from None
    for name, t in spec["tensors"].items():
        if name not in nodes:
            raise LoadError("compression.json names a tensor the checkpoint lacks", tensor=name,
                            hint="the folder mixes files from different exports")
        node = nodes[name]
        try:
            node.rep = _rep(node.rep.decode(), t, {k[len(name) + 1:]: v for k, v in arrays.items()
                                                    if k.startswith(name + ".")})
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError) as e:  # a hostile record can break any step of the reconstruction
            raise LoadError(f"compression record does not fit the weight: {str(e)[:160]}", tensor=name,
                            hint="the checkpoint's weights are not on the grid compression.json describes; "
                                 "re-export it") from e
    return len(spec["tensors"])


def _codebook(w: torch.Tensor, t: dict[str, Any], arrays: dict[str, torch.Tensor]) -> Codebook:
    lut = arrays["lut"].numpy()[None]  # [1, nlut, K, d]
    scales = arrays["scales"].numpy() if "scales" in arrays else None
    cb = Codebook(arrays["codes"].numpy()[None], lut, scales, int(t["group"]))
    if cb.kbits != int(t["bits"]) or cb.d != int(t["d"]):
        raise ValueError(f"codebook arrays hold {cb.kbits}-bit / d={cb.d}, the record says {t['bits']} / {t['d']}")
    if not torch.equal(cb.decode(), w):
        raise ValueError("the weights do not decode exactly from their codebook")
    return cb


def _zero_mode(t: dict[str, Any]) -> str:
    return "sym" if t["sym"] else t.get("zero", "int")


def _quantized(codes: np.ndarray, t: dict[str, Any], arrays: dict[str, torch.Tensor]) -> Quantized:
    """The record's grid (fp16 scales; int zeros or fp16 mins) around these codes."""
    zmode = _zero_mode(t)
    return Quantized(codes, arrays["scales"].numpy(), arrays["zeros"].to(torch.uint8).numpy() if zmode == "int" else None,
                     int(t["bits"]), int(t["group"]), arrays["mins"].numpy() if zmode == "float" else None)


def _lowrank(w: torch.Tensor, t: dict[str, Any], arrays: dict[str, torch.Tensor]) -> LowRank:
    lr = LowRank(arrays["U"], arrays["V"], _quantized(arrays["codes"].numpy(), t, arrays), "f16")
    if lr.rank != int(t["rank"]) or not torch.equal(lr.decode(), w):
        raise ValueError("the weights do not decode exactly from U V + their quantized residual")
    return lr


def _rep(w: torch.Tensor, t: dict[str, Any], arrays: dict[str, torch.Tensor]) -> Quantized | Sparse | Codebook | LowRank:
    for key, low, top in (("bits", 1, 8), ("group", 0, 1 << 20), ("d", 1, 16), ("rank", 1, 1 << 16)):
        if key in t and (type(t[key]) is not int or not low <= t[key] <= top):
            raise ValueError(f"{key} = {str(t[key])[:40]} is not a whole number from {low} to {top}")
    if t.get("format") == "codebook":
        return _codebook(w, t, arrays)
    if t.get("format") == "lowrank":
        return _lowrank(w, t, arrays)
    from .passes.quant import _grouped
    rows, cols = w.shape
    bits, group, sym = int(t["bits"]), int(t["group"]), bool(t["sym"])
    mask = None
    if t.get("nm"):
        n, m = (int(v) for v in t["nm"])
        bitsarr = np.unpackbits(arrays["mask"].numpy(), axis=1, count=cols, bitorder="little")
        mask = torch.from_numpy(bitsarr.astype(bool))
        if not (mask.reshape(rows, cols // m, m).sum(-1) == n).all():
            raise ValueError(f"mask is not {n}:{m}")
        vals = w[mask].view(rows, -1)
    else:
        vals = w
    scale = arrays["scales"].to(torch.float32)
    zmode = _zero_mode(t)
    x, g, ng = _grouped(vals, group)
    if zmode == "float":
        codes = torch.round((x - arrays["mins"].to(torch.float32)[..., None]) / scale[..., None])
    else:
        zero = torch.full_like(scale, float(1 << (bits - 1))) if sym else arrays["zeros"].to(torch.float32)
        codes = torch.round(x / scale[..., None]) + zero[..., None]
    codes = codes.reshape(rows, -1)[:, :vals.shape[1]]
    if codes.min() < 0 or codes.max() > (1 << bits) - 1:
        raise ValueError(f"codes fall outside {bits} bits")
    q = _quantized(codes.to(torch.uint8).numpy(), t, arrays)
    if not torch.equal(q.decode(), vals):
        raise ValueError("the weights do not decode exactly from their codes")
    return q if mask is None else Sparse(mask.numpy(), q, n, m)
