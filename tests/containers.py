"""Helpers for container tests: a small synthetic model and a forger of re-signed files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cllm_compiler.container import ALIGN, END, FOOTER, MAGIC, PREFIX, canonical, write_container
from cllm_compiler.ir import Model, ModelConfig, TensorNode, TokenizerSpec
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.reprs import Dense


def tiny_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models
    return Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]")).to_str()


def small_model(seed: int = 0) -> Model:
    """Four small tensors covering dense f16/f32 and quant coded with rans, zstd and raw."""
    cfg = ModelConfig(arch="llama", vocab_size=8, hidden_size=64, intermediate_size=64, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=32, rope_theta=10000.0)
    g = torch.Generator().manual_seed(seed)
    m = Model(cfg, TokenizerSpec(tiny_tokenizer_json()), source={"format": "test"})
    for name, shape in [("model.embed_tokens.weight", (8, 64)), ("model.layers.0.mlp.up_proj.weight", (64, 64)),
                        ("model.layers.0.self_attn.q_proj.weight", (32, 64)), ("model.norm.weight", (64,))]:
        m.add(TensorNode(name, shape, Dense(shape, "f32", data=torch.randn(shape, generator=g))))
    PassManager(parse_pipeline("quant{bits=4,group=32},quant{bits=3,group=32,match=embed},"
                               "cast{dtype=f16,match=linear},entropy{codec=auto,match=mlp|embed}")).run(m)
    return m


def small_file(path: Path, seed: int = 0) -> bytes:
    write_container(small_model(seed), path)
    return path.read_bytes()


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    hlen = PREFIX.unpack_from(data, 0)[5]
    start = PREFIX.size + hlen + (-(PREFIX.size + hlen)) % ALIGN
    return json.loads(data[PREFIX.size:PREFIX.size + hlen]), data[start:len(data) - FOOTER.size]


def forge(data: bytes, edit: Callable[[dict[str, Any]], Any] | None = None, *, header: bytes | None = None,
          payload: bytes | None = None, version: int = 2, required: int = 0) -> bytes:
    """Re-sign a container after editing its header/payload, so the edit reaches the validator."""
    h, p = split(data)
    if edit is not None:
        edit(h)  # edits mutate the header in place
    hb = header if header is not None else canonical(h)
    p = payload if payload is not None else p
    pre = PREFIX.pack(MAGIC, version, 0, required, 0, len(hb), hashlib.sha256(hb).digest())
    body = pre + hb + b"\0" * ((-(PREFIX.size + len(hb))) % ALIGN) + p
    return body + FOOTER.pack(len(hb), hashlib.sha256(body).digest(), END)


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
