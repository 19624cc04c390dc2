"""Regenerate tests/data/golden.cllm and golden.json (only when the format changes on purpose).

    python tests/make_golden.py
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from cllm_compiler.container import read_container, write_container
from cllm_compiler.ir import Model, ModelConfig, TensorNode
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.reprs import Dense

HERE = Path(__file__).parent / "data"
# (name, shape, pipeline applied to that tensor alone)
SPECS = [
    ("model.layers.0.self_attn.q_proj.weight", (64, 96), "quant{bits=2,group=32},entropy{codec=rans}"),
    ("model.layers.0.self_attn.k_proj.weight", (32, 96), "quant{bits=3,group=32,sym=true},entropy{codec=rans}"),
    ("model.layers.0.self_attn.v_proj.weight", (32, 96), "quant{bits=4,group=32,zero=float},entropy{codec=zstd}"),
    ("model.layers.0.self_attn.o_proj.weight", (96, 64), "quant{bits=8,group=channel},entropy{codec=zstd}"),
    ("model.layers.0.mlp.gate_proj.weight", (128, 96), "quant{bits=5,group=64},entropy{codec=auto}"),
    ("model.layers.0.mlp.up_proj.weight", (128, 96), "quant{bits=6,group=96,sym=true},entropy{codec=raw}"),
    ("model.layers.0.mlp.down_proj.weight", (96, 128), "quant{bits=4,group=128}"),
    ("model.embed_tokens.weight", (40, 96), "cast{dtype=bf16,match=embed},entropy{codec=zstd}"),
    ("model.layers.0.input_layernorm.weight", (96,), "cast{dtype=f16,match=norm},entropy{codec=zstd}"),
    ("model.norm.weight", (96,), "entropy{codec=raw}"),
]


def build() -> Model:
    cfg = ModelConfig(arch="llama", vocab_size=40, hidden_size=96, intermediate_size=128, num_layers=1,
                      num_heads=3, num_kv_heads=1, head_dim=32)
    m = Model(cfg, None, source={"format": "golden"})
    g = torch.Generator().manual_seed(2026)
    for name, shape, pipe in SPECS:
        one = Model(cfg, None)
        one.add(TensorNode(name, shape, Dense(shape, "f32", data=torch.randn(shape, generator=g) * 0.05)))
        PassManager(parse_pipeline(pipe.replace("}", ",match=all}") if "match" not in pipe else pipe)).run(one)
        m.add(one.tensors[name])
    return m


def digests(model: Model) -> dict[str, str]:
    return {n.name: hashlib.sha256(n.rep.decode().numpy().tobytes()).hexdigest() for n in model}


if __name__ == "__main__":
    write_container(build(), HERE / "golden.cllm")
    d = digests(read_container(HERE / "golden.cllm"))
    (HERE / "golden.json").write_text(json.dumps(d, indent=1, sort_keys=True) + "\n")
    print(json.dumps(d, indent=1))
