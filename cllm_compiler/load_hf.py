"""Read a Hugging Face model directory (config.json + *.safetensors, sharded or not).

Tensors are not read here: each IR tensor gets a lazy loader that memory-maps its
safetensors file on decode, so a pass streams the model tensor by tensor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import LoadError, UnsupportedModelError
from .ir import Model, ModelConfig, TensorNode, TokenizerSpec
from .reprs import Dense

ARCH_BY_CLASS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                 "Qwen2ForCausalLM": "qwen2"}
# safetensors dtype -> (torch dtype, IR storage dtype); other dtypes load as f32
_ST_DTYPES = {"F32": (torch.float32, "f32"), "F16": (torch.float16, "f16"), "BF16": (torch.bfloat16, "bf16")}


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    classes = cfg.get("architectures") or []
    arch = next((ARCH_BY_CLASS[c] for c in classes if c in ARCH_BY_CLASS), None)
    if arch is None:
        name = classes[0] if classes else cfg.get("model_type", "unknown")
        raise UnsupportedModelError(f"architecture '{name}' is not supported",
                                    hint=f"supported: {', '.join(sorted(ARCH_BY_CLASS))}")
    try:
        heads = int(cfg["num_attention_heads"])
        rope = cfg.get("rope_parameters") or {}
        return ModelConfig(
            arch=arch, vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=_first(cfg.get("eos_token_id")))
    except (KeyError, TypeError, ValueError) as e:
        raise LoadError(f"config.json lacks or mangles {e}", hint="is this a Llama-family config?") from e


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, list) and v else v


def _shards(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise LoadError(f"{index} is not a valid shard index: {e}") from e
        return [path / n for n in names]
    # compression.safetensors holds a cllm-train export's scales and masks, not model weights
    files = sorted(f for f in path.glob("*.safetensors") if f.name != "compression.safetensors")
    if not files:
        raise LoadError(f"no *.safetensors in {path}",
                        hint="cllm reads safetensors only (never pickled .bin files); convert with transformers")
    return files


def _loader(file: Path, name: str):
    def load() -> torch.Tensor:
        from safetensors import safe_open
        with safe_open(str(file), framework="pt") as f:
            return f.get_tensor(name)
    return load


def _extents(file: Path) -> dict[str, tuple[int, int, torch.dtype, list[int]]]:
    """Absolute byte extents of 2-D float tensors, from the safetensors header (bounds-checked)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= min(size - 8, 100 * 2**20):
            raise LoadError(f"{file.name}: header length {n} is impossible", hint="the file is corrupt")
        header = json.loads(f.read(n))
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info.get("dtype") not in _ST_DTYPES or len(info.get("shape", [])) != 2:
            continue
        a, b = info["data_offsets"]
        if not 0 <= a <= b <= size - 8 - n:
            raise LoadError(f"{file.name}: tensor '{name}' lies outside the file", hint="the file is corrupt")
        out[name] = (8 + n + a, b - a, _ST_DTYPES[info["dtype"]][0], info["shape"])
    return out


def _row_loader(file: Path, extent: tuple[int, int, torch.dtype, list[int]]):
    start0, nbytes, dtype, shape = extent
    row_bytes = nbytes // max(shape[0], 1)

    def rows(start: int, stop: int) -> torch.Tensor:
        # Plain reads, not mmap: the bytes become ordinary heap memory that is freed with the block.
        start, stop = max(0, start), min(shape[0], stop)
        with open(file, "rb") as f:
            buf = bytearray(os.pread(f.fileno(), (stop - start) * row_bytes, start0 + start * row_bytes))
        return torch.frombuffer(buf, dtype=dtype).reshape(stop - start, shape[1]) if buf else \
            torch.empty(0, shape[1], dtype=dtype)
    return rows


def load_hf_dir(path: Path) -> Model:
    from safetensors import SafetensorError, safe_open
    try:
        cfg = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise LoadError(f"{path} has no config.json", hint="pass a Hugging Face model folder or a .gguf file") from None
    except ValueError as e:
        raise LoadError(f"{path / 'config.json'} is not valid JSON: {e}") from e
    config = config_from_hf(cfg)
    tok = None
    if (path / "tokenizer.json").exists():
        tcfg = path / "tokenizer_config.json"
        extra = json.loads(tcfg.read_text()) if tcfg.exists() else {}
        tok = TokenizerSpec((path / "tokenizer.json").read_text(),
                            add_bos=bool(extra.get("add_bos_token", False)),
                            chat_template=extra.get("chat_template"))
    model = Model(config, tok, source={"format": "safetensors"})
    for file in _shards(path):
        try:
            extents = _extents(file)
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if name == "lm_head.weight" and config.tie_word_embeddings:
                        continue
                    sl = f.get_slice(name)
                    dtype = _ST_DTYPES.get(sl.get_dtype(), (None, "f32"))[1]
                    shape = tuple(sl.get_shape())
                    rows = _row_loader(file, extents[name]) if name in extents else None
                    model.add(TensorNode(name, shape, Dense(shape, dtype, loader=_loader(file, name),
                                                            row_loader=rows)))
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            raise LoadError(f"cannot read {file.name}: {e}", hint="the file is corrupt or truncated; re-download it") from e
    return model
