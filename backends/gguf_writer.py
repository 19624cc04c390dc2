"""Lower the IR to a GGUF file (gguf-py): exact GGUF types where the IR holds one, measured
re-quantization where it does not.

Exact mappings (gguf-py's dequantizer gives back the IR's decode bit for bit):
  ggml pass output (K-quants, i-quants, ...) -> the same blocks, copied
  quant bits=8 sym g32 -> Q8_0  w = d*q            quant bits=4 sym g32 -> Q4_0  w = d*(q-8)
  quant bits=5 sym g32 -> Q5_0  w = d*(q-16)       quant bits=4/5 zero=float g32 -> Q4_1/Q5_1  w = d*q + m
  dense f32/f16/bf16 -> F32/F16/BF16
Anything else (codebooks, VQ, low-rank, N:M, other groups) is re-quantized per tensor to the
GGUF type with the least error among those no larger than the tensor's own bits ('requant'),
or dequantized to F32/F16; each such tensor is reported with its extra error. Every check runs
before the first byte is written.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import BackendError, CllmError
from ..ir import Model, TensorNode
from ..load_gguf import _BLOCK, _TOP
from ..reprs import Encoded, Quantized, Representation
from ..reprs_ggml import GGMLBlocks
from . import ggml_lib
from .gguf_meta import arch_meta, gguf_arch, tokenizer_meta
from .gguf_types import dense_data, exact_type, inexact_data, quant_blocks

_REV_TOP = {v: k for k, v in _TOP.items()}
_REV_BLOCK = {v: k for k, v in _BLOCK.items()}


@dataclass
class Lowered:
    name: str  # GGUF tensor name
    data: np.ndarray
    gtype: str  # GGML type name
    note: str | None = None


def gguf_name(name: str) -> str:
    if name in _REV_TOP:
        return _REV_TOP[name]
    parts = name.split(".")  # model.layers.N.<module path>.weight|bias
    sub = _REV_BLOCK.get(".".join(parts[3:-1])) if len(parts) > 4 and parts[:2] == ["model", "layers"] else None
    if sub is None:
        raise BackendError("no GGUF tensor name for this tensor", tensor=name,
                           hint="the GGUF backend maps Llama-family decoder weights only")
    return f"blk.{parts[2]}.{sub}.{parts[-1]}"


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF -> llama.cpp row order for q/k (inverse of load_gguf.unpermute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _plain(rep: Representation) -> Representation:
    return rep.inner() if isinstance(rep, Encoded) else rep


GGUF_ALIGN = 32


def tensor_nbytes(node: TensorNode) -> int:
    """Bytes `node` adds to a GGUF (tensor-info record, data, average alignment padding), for
    an allocator budgeting the GGUF file itself. Needs a tensor with an exact GGUF type."""
    kind = exact_type(node.rep)
    if kind is None:
        raise BackendError(f"{node.rep.describe()} has no exact GGUF type, so its GGUF size is not known "
                           "before re-quantization", tensor=node.name,
                           hint="with allocate{rate=gguf}, let later passes produce GGUF types (ggml, quant g32)")
    if kind in ("F32", "F16", "BF16"):
        data = node.numel * (4 if kind == "F32" else 2)
    else:
        data = node.shape[0] * ggml_lib.row_bytes(kind, node.shape[1])
    return 8 + len(gguf_name(node.name).encode()) + 4 + 8 * len(node.shape) + 4 + 8 + data + GGUF_ALIGN // 2


def meta_nbytes(model: Model) -> int:
    """Bytes of the GGUF header and metadata (architecture, tokenizer) without tensors."""
    import os
    import tempfile

    import gguf
    fd, tmp = tempfile.mkstemp(suffix=".gguf")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, gguf_arch(model))
        arch_meta(w, model)
        tokenizer_meta(w, model)
        w.add_file_type(0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        return os.path.getsize(tmp) + GGUF_ALIGN
    finally:
        os.unlink(tmp)


def lower_tensor(node: TensorNode, heads: int | None, inexact: str) -> Lowered:
    rep, kind = _plain(node.rep), exact_type(node.rep)
    note = None
    if isinstance(rep, GGMLBlocks):
        data = rep.blocks
    elif isinstance(rep, Quantized) and kind:
        data = quant_blocks(rep, kind)
    else:
        t = rep.decode()
        if kind is None:
            kind, data, note = inexact_data(node, rep, t, inexact)
        else:
            data = dense_data(t, kind)
    if heads:
        data = permute(torch.from_numpy(np.ascontiguousarray(data)), heads).numpy()
    return Lowered(gguf_name(node.name), np.ascontiguousarray(data), kind, note)


def lower(model: Model, inexact: str = "requant",
          progress: Callable[[str], None] | None = None) -> Iterator[Lowered]:
    """Every tensor as GGUF data, in model order (lazily: one decoded tensor at a time)."""
    arch = gguf_arch(model)
    for node in model:
        heads = None
        if arch == "llama" and node.name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = model.config.num_heads if "q_proj" in node.name else model.config.num_kv_heads
        try:
            yield lower_tensor(node, heads, inexact)
        except CllmError as e:
            raise type(e)(e.message, tensor=e.tensor or node.name, hint=e.hint) from None
        if progress:
            progress(node.name)


@dataclass
class Written:
    notes: list[str]  # tokenizer approximations and inexact tensors, one line each
    tensor_types: dict[str, int]  # GGUF type -> number of tensors written in it


def write_gguf(model: Model, path: Path, inexact: str = "requant",
               progress: Callable[[str], None] | None = None) -> Written:
    """Write `model` to `path` (the caller makes it atomic). All tensors are lowered (and every
    check run) before the file is opened."""
    import gguf
    if inexact not in ("requant", "f32", "f16", "bf16"):
        raise BackendError(f"inexact={inexact!r}", hint="requant, f32, f16 or bf16")
    arch = gguf_arch(model)
    tensors = list(lower(model, inexact, progress))
    w = gguf.GGUFWriter(str(path), arch)
    try:
        arch_meta(w, model)
        notes = tokenizer_meta(w, model)
        w.add_file_type(_file_type(tensors))
        for t in tensors:
            raw = None if t.gtype in ("F32", "F16") else getattr(gguf.GGMLQuantizationType, t.gtype)
            w.add_tensor(t.name, t.data, raw_dtype=raw)
            if t.note:
                notes.append(f"{t.name}: {t.note}")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return Written(notes, dict(sorted(Counter(t.gtype for t in tensors).items())))


def _file_type(tensors: list[Lowered]) -> int:
    """general.file_type: the most common 2-D type (llama.cpp only displays it)."""
    import gguf
    counts: dict[str, int] = {}
    for t in tensors:
        if t.data.ndim == 2:
            counts[t.gtype] = counts.get(t.gtype, 0) + t.data.size
    top = max(counts, key=counts.__getitem__) if counts else "F32"
    for name in (f"MOSTLY_{top}", f"MOSTLY_{top}_M", "ALL_F32"):
        if hasattr(gguf.LlamaFileType, name):
            return int(getattr(gguf.LlamaFileType, name))
    return 0
