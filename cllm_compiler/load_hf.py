"""Read a Hugging Face model directory (config.json + *.safetensors, sharded or not).

Tensors are not read here: each IR tensor gets a lazy loader that memory-maps its
safetensors file on decode, so a pass streams the model tensor by tensor.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from .errors import LoadError, UnsupportedModelError
from .ir import Model, ModelConfig, TensorNode, TokenizerSpec
from .model_checks import check_finite, check_tensors, whole
from .reprs import Dense
from .safeio import SMALL, TOKENIZER, json_type, parse_json, read_json, read_text, regular_file, short

ARCH_BY_CLASS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                 "Qwen2ForCausalLM": "qwen2"}
# safetensors dtype -> (torch dtype, IR storage dtype); other dtypes load as f32
_ST_DTYPES = {"F32": (torch.float32, "f32"), "F16": (torch.float16, "f16"), "BF16": (torch.bfloat16, "bf16")}
_ST_NAME = {v[0]: k for k, v in _ST_DTYPES.items()}


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    classes = [c for c in cfg.get("architectures") or [] if isinstance(c, str)] \
        if isinstance(cfg.get("architectures"), list) else []
    arch = next((ARCH_BY_CLASS[c] for c in classes if c in ARCH_BY_CLASS), None)
    if arch is None:
        name = classes[0] if classes else cfg.get("model_type", "unknown")
        raise UnsupportedModelError(f"architecture '{str(name)[:80]}' is not supported",
                                    hint=f"supported: {', '.join(sorted(ARCH_BY_CLASS))}")
    try:
        heads = whole(cfg["num_attention_heads"])
        rope = _rope(cfg)
        return ModelConfig(
            arch=arch, vocab_size=whole(cfg["vocab_size"]), hidden_size=whole(cfg["hidden_size"]),
            intermediate_size=whole(cfg["intermediate_size"]), num_layers=whole(cfg["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=whole(cfg.get("num_key_value_heads") or heads),
            head_dim=whole(cfg.get("head_dim") or whole(cfg["hidden_size"]) // heads),
            rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=_first(cfg.get("eos_token_id")))
    except KeyError as e:
        raise LoadError(f"config.json lacks {e}", hint="is this a Llama-family config?") from None
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as e:
        raise LoadError(f"config.json mangles a field: {str(e)[:120]}", hint="is this a Llama-family config?") from None


def _rope(cfg: dict[str, Any]) -> dict[str, Any]:
    """The RoPE record; scaled RoPE is refused rather than silently run with the wrong frequencies."""
    rope, scaling = cfg.get("rope_parameters"), cfg.get("rope_scaling")
    for key, rec in (("rope_parameters", rope), ("rope_scaling", scaling)):
        if rec is not None and not isinstance(rec, dict):
            raise LoadError(f"config.json: {key} is a {json_type(rec)}, not an object",
                            hint="the config is damaged or hand-edited")
    kind = next((r.get("rope_type", r.get("type")) for r in (scaling, rope) if r), None)
    if kind not in (None, "default"):
        raise UnsupportedModelError(f"RoPE scaling '{str(kind)[:40]}' is not supported yet",
                                    hint="cllm runs unscaled RoPE only; compiling this model would use the wrong "
                                         "rotary frequencies")
    return rope or {}


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, list) and v else v


def _shards(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if os.path.lexists(index):
        wmap = read_json(index, SMALL * 4, inside=path).get("weight_map")
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise LoadError(f"{index.name}: weight_map is not a mapping of tensor names to file names",
                            hint="the shard index is damaged; re-download it")
        names = sorted(set(wmap.values()))
        bad = next((n for n in names if "/" in n or "\\" in n or n.startswith(".") or not n.endswith(".safetensors")), None)
        if bad is not None:
            raise LoadError(f"{index.name} names a shard outside the folder or not a .safetensors file: {bad[:80]!r}",
                            hint="shards must be .safetensors files in the model folder")
        return [regular_file(path / n, inside=path) for n in names]
    # compression.safetensors holds a cllm-train export's scales and masks, not model weights
    files = sorted(f for f in path.glob("*.safetensors") if f.name != "compression.safetensors")
    if not files:
        raise LoadError(f"no *.safetensors in {path}",
                        hint="cllm reads safetensors only (never pickled .bin files); convert with transformers")
    return [regular_file(f, inside=path) for f in files]


def _loader(file: Path, name: str):
    def load() -> torch.Tensor:
        from safetensors import safe_open
        with safe_open(str(file), framework="pt") as f:
            return check_finite(name, f.get_tensor(name))
    return load


def _extents(file: Path) -> dict[str, tuple[int, int, torch.dtype, list[int]]]:
    """Every tensor's absolute byte extent, dtype and shape, from the safetensors header, checked
    against the file before anything is read: float dtypes only, sizes that match their shapes,
    inside the file and not overlapping."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= min(size - 8, 100 * 2**20):
            raise LoadError(f"{file.name}: header length {n} is impossible", hint="the file is corrupt")
        header = parse_json(f.read(n), f"{file.name}'s header")
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = dict(tensor=name, hint="the file is corrupt or not a model checkpoint")
        if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
            raise LoadError(f"{file.name}: dtype {short(info.get('dtype') if isinstance(info, dict) else info)} "
                            "is not a float type cllm loads (F32, F16, BF16)", **where)
        shape, offs = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) <= 4 and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
            raise LoadError(f"{file.name}: malformed shape or data_offsets", **where)
        a, b = offs
        if not 0 <= a <= b <= size - 8 - n or b - a != math.prod(shape) * _ST_DTYPES[info["dtype"]][0].itemsize:
            raise LoadError(f"{file.name}: the tensor's bytes lie outside the file or disagree with its shape", **where)
        out[name] = (8 + n + a, b - a, _ST_DTYPES[info["dtype"]][0], shape)
        spans.append((a, b, name))
    spans.sort()
    for (a0, b0, n0), (a1, b1, n1) in zip(spans, spans[1:]):
        if a1 < b0 and b1 > a1:
            raise LoadError(f"{file.name}: the bytes of '{n0}' and '{n1}' overlap", tensor=n1,
                            hint="the file is corrupt or crafted")
    return out


def _row_loader(file: Path, name: str, extent: tuple[int, int, torch.dtype, list[int]]):
    start0, nbytes, dtype, shape = extent
    row_bytes = nbytes // max(shape[0], 1)

    def rows(start: int, stop: int) -> torch.Tensor:
        # Plain reads, not mmap: the bytes become ordinary heap memory that is freed with the block.
        start, stop = max(0, start), min(shape[0], stop)
        with open(file, "rb") as f:
            buf = bytearray(os.pread(f.fileno(), (stop - start) * row_bytes, start0 + start * row_bytes))
        return check_finite(name, torch.frombuffer(buf, dtype=dtype).reshape(stop - start, shape[1])) if buf else \
            torch.empty(0, shape[1], dtype=dtype)
    return rows


def _tokenizer(path: Path) -> TokenizerSpec | None:
    tj = path / "tokenizer.json"
    if not os.path.lexists(tj):
        return None
    text = read_text(tj, TOKENIZER, inside=path)
    try:
        from tokenizers import Tokenizer
        Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises plain Exception subclasses from Rust
        raise LoadError(f"tokenizer.json is not a tokenizer the tokenizers library reads: {str(e)[:120]}",
                        hint="the file is damaged; copy it again from the model's source") from None
    tcfg = path / "tokenizer_config.json"
    extra = read_json(tcfg, TOKENIZER, inside=path) if os.path.lexists(tcfg) else {}
    template = extra.get("chat_template")
    if isinstance(template, list):  # the older named-templates form
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    if template is not None and not isinstance(template, str):
        raise LoadError(f"tokenizer_config.json: chat_template is a {json_type(template)}, not text",
                        hint="the file is damaged; copy it again from the model's source")
    return TokenizerSpec(text, add_bos=extra.get("add_bos_token") is True, chat_template=template)


def load_hf_dir(path: Path) -> Model:
    from safetensors import SafetensorError, safe_open
    if not os.path.lexists(path / "config.json"):
        raise LoadError(f"{path} has no config.json", hint="pass a Hugging Face model folder or a .gguf file")
    config = config_from_hf(read_json(path / "config.json", SMALL, inside=path))
    model = Model(config, _tokenizer(path), source={"format": "safetensors"})
    for file in _shards(path):
        try:
            extents = _extents(file)
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if name == "lm_head.weight" and config.tie_word_embeddings:
                        continue
                    if name in model.tensors:
                        raise LoadError(f"{file.name} repeats a tensor another shard holds", tensor=name,
                                        hint="the folder mixes files from different checkpoints")
                    dtype = _ST_DTYPES[_ST_NAME[extents[name][2]]][1]
                    shape = tuple(extents[name][3])
                    rows = _row_loader(file, name, extents[name]) if len(shape) == 2 else None
                    model.add(TensorNode(name, shape, Dense(shape, dtype, loader=_loader(file, name),
                                                            row_loader=rows)))
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            raise LoadError(f"cannot read {file.name}: {str(e)[:160]}",
                            hint="the file is corrupt or truncated; re-download it") from e
    check_tensors(model, str(path.name))
    return model
