"""Write the IR as a GGUF file with gguf-py: exact GGUF types where the IR's format is one.

Exact mappings (decode is bit-identical in gguf-py's dequantizer):
  quant bits=8 sym g32 -> Q8_0   w = d*q
  quant bits=4 sym g32 -> Q4_0   w = d*(q-8)
  quant bits=4 zero=float g32 -> Q4_1   w = d*q + m
  dense f32/f16/bf16 -> F32/F16/BF16
Anything else is dequantized to `fallback` (F32 exact, F16 lossy) and reported.
Issue 5 builds the full backend (K-quants, importance matrices, llama.cpp validation) on this.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CllmError
from ..ir import Model
from ..load_gguf import _BLOCK, _TOP
from ..reprs import Dense, Encoded, Quantized, Representation

_REV_TOP = {v: k for k, v in _TOP.items()}
_REV_BLOCK = {v: k for k, v in _BLOCK.items()}


def gguf_name(name: str) -> str:
    if name in _REV_TOP:
        return _REV_TOP[name]
    parts = name.split(".")  # model.layers.N.<module path>.weight|bias
    return f"blk.{parts[2]}.{_REV_BLOCK['.'.join(parts[3:-1])]}.{parts[-1]}"


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF -> llama.cpp row order for q/k (inverse of load_gguf.unpermute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _plain(rep: Representation) -> Representation:
    return rep.inner() if isinstance(rep, Encoded) else rep


def _blocks(q: Quantized, kind: str) -> np.ndarray:
    rows, cols = q.codes.shape
    codes = q.codes.reshape(rows, cols // 32, 32)
    d = q.scales.astype("<f2").reshape(rows, cols // 32, 1).view(np.uint8)
    if kind == "Q8_0":
        qs = (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        return np.concatenate([d, qs], axis=-1).reshape(rows, -1)
    nib = (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)
    if kind == "Q4_0":
        return np.concatenate([d, nib], axis=-1).reshape(rows, -1)
    m = q.mins.astype("<f2").reshape(rows, cols // 32, 1).view(np.uint8)  # type: ignore[union-attr]
    return np.concatenate([d, m, nib], axis=-1).reshape(rows, -1)


def exact_type(rep: Representation) -> str | None:
    rep = _plain(rep)
    if isinstance(rep, Dense):
        return {"f32": "F32", "f16": "F16", "bf16": "BF16"}[rep.dtype]
    if isinstance(rep, Quantized) and rep.group == 32 and rep.codes.shape[1] % 32 == 0:
        if rep.bits == 8 and rep.symmetric:
            return "Q8_0"
        if rep.bits == 4 and rep.symmetric:
            return "Q4_0"
        if rep.bits == 4 and rep.mins is not None:
            return "Q4_1"
    return None


def _arch_meta(w: Any, model: Model) -> None:
    c = model.config
    w.add_block_count(c.num_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)


def _tokenizer_meta(w: Any, model: Model) -> list[str]:
    if model.tokenizer is None:
        return ["no tokenizer in the artifact: the GGUF has none"]
    tj = json.loads(model.tokenizer.tokenizer_json)
    m = tj.get("model", {})
    if m.get("type") != "BPE":
        return [f"tokenizer type {m.get('type')} is not written to GGUF yet (issue 5)"]
    vocab = dict(m["vocab"])
    special = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    vocab.update(special)
    tokens = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        tokens[i] = tok
    merges = [mm if isinstance(mm, str) else " ".join(mm) for mm in m.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    if model.config.bos_token_id is not None:
        w.add_bos_token_id(int(model.config.bos_token_id))
    if model.config.eos_token_id is not None:
        w.add_eos_token_id(int(model.config.eos_token_id))
    w.add_add_bos_token(model.tokenizer.add_bos)
    if model.tokenizer.chat_template:
        w.add_chat_template(model.tokenizer.chat_template)
    return []


def write_gguf(model: Model, path: Path, fallback: str = "F32") -> list[str]:
    """Write `model` to `path` (caller handles atomicity); return notes on inexact tensors."""
    import gguf
    if model.config.arch not in ("llama", "mistral", "qwen2"):
        raise CllmError(f"no GGUF mapping for architecture '{model.config.arch}'")
    arch = "qwen2" if model.config.arch == "qwen2" else "llama"
    w = gguf.GGUFWriter(str(path), arch)
    _arch_meta(w, model)
    notes = _tokenizer_meta(w, model)
    Q = gguf.GGMLQuantizationType
    for node in model:
        kind = exact_type(node.rep)
        heads = None
        if arch == "llama" and node.name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = model.config.num_heads if "q_proj" in node.name else model.config.num_kv_heads
        if kind in ("Q8_0", "Q4_0", "Q4_1"):
            q = _plain(node.rep)
            data = _blocks(q, kind)  # type: ignore[arg-type]
            if heads:
                data = permute(torch.from_numpy(data), heads).numpy()
            w.add_tensor(gguf_name(node.name), data, raw_dtype=getattr(Q, kind))
            continue
        t = node.rep.decode()
        if heads:
            t = permute(t, heads)
        if kind is None:
            kind = fallback
            notes.append(f"{node.name}: {node.rep.describe()} has no exact GGUF type; written as {fallback}"
                         + (" (lossy)" if fallback != "F32" else " (exact, larger)"))
        np_t = {"F32": t.numpy(), "F16": t.half().numpy(), "BF16": t.bfloat16().view(torch.int16).numpy()}[kind]
        w.add_tensor(gguf_name(node.name), np.ascontiguousarray(np_t),
                     raw_dtype=Q.BF16 if kind == "BF16" else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return notes
