"""Read a GGUF file with gguf-py: metadata -> ModelConfig, tensors dequantized lazily.

llama.cpp's converter permutes the rows of q/k projections for the Llama architecture
(to interleave rotary halves); we undo it so the IR holds Hugging Face layouts.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import LoadError, UnsupportedModelError
from .gguf_guard import check_gguf
from .ir import Model, ModelConfig, TensorNode, TokenizerSpec
from .model_checks import check_finite, check_tensors, whole
from .reprs import Dense

GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
SKIP = {"rope_freqs.weight"}  # derived from config, not a weight


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    return None


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp convert's q/k permutation."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def config_from_gguf(reader: Any) -> ModelConfig:
    arch = _field(reader, "general.architecture", "unknown")
    if not isinstance(arch, str) or arch not in GGUF_ARCHS:
        raise UnsupportedModelError(f"architecture '{str(arch)[:80]}' is not supported",
                                    hint=f"supported GGUF architectures: {', '.join(GGUF_ARCHS)}")
    a = arch
    try:
        heads = whole(_field(reader, f"{a}.attention.head_count"))
        hidden = whole(_field(reader, f"{a}.embedding_length"))
        vocab = _field(reader, f"{a}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
        if hidden % max(heads, 1) and _field(reader, f"{a}.attention.key_length") is None:
            raise ValueError(f"head_count {heads} does not divide embedding_length {hidden}")
        return ModelConfig(
            arch=GGUF_ARCHS[arch], vocab_size=whole(vocab), hidden_size=hidden,
            intermediate_size=whole(_field(reader, f"{a}.feed_forward_length")),
            num_layers=whole(_field(reader, f"{a}.block_count")), num_heads=heads,
            num_kv_heads=whole(_field(reader, f"{a}.attention.head_count_kv", heads)),
            head_dim=whole(_field(reader, f"{a}.attention.key_length", hidden // max(heads, 1))),
            rope_theta=float(_field(reader, f"{a}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(_field(reader, f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            max_position_embeddings=int(_field(reader, f"{a}.context_length", 2048)),
            tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
            attention_bias=any(t.name.endswith("attn_q.bias") for t in reader.tensors),
            bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"))
    except KeyError as e:
        raise LoadError(f"GGUF metadata lacks {e}", hint="is this a model GGUF (not a LoRA/vocab file)?") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise LoadError(f"GGUF metadata is incomplete or mangled: {str(e)[:120]}",
                        hint="is this a model GGUF (not a LoRA/vocab file)?") from None


def _tokenizer(path: Path, reader: Any) -> TokenizerSpec | None:
    if "tokenizer.ggml.tokens" not in reader.fields:
        return None
    from transformers import AutoTokenizer  # converts GGUF vocab+merges to tokenizers JSON
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # transformers raises many types here
        raise LoadError(f"cannot build tokenizer from {path.name}: {e}") from e
    template = _field(reader, "tokenizer.chat_template")
    return TokenizerSpec(tok.backend_tokenizer.to_str(),
                         add_bos=_field(reader, "tokenizer.ggml.add_bos_token", False) is True,
                         chat_template=template if isinstance(template, str) else None)


def _dequantize(data: Any, qtype: Any) -> torch.Tensor:
    from gguf.quants import dequantize
    arr = np.ascontiguousarray(dequantize(data, qtype), dtype=np.float32)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # F32 tensors are read-only memmaps


def _loader(t: Any, name: str, permute_heads: int | None):
    def load() -> torch.Tensor:
        w = check_finite(name, _dequantize(t.data, t.tensor_type))
        return unpermute(w, permute_heads) if permute_heads else w
    return load


def _row_loader(t: Any, name: str):
    def rows(start: int, stop: int) -> torch.Tensor:
        return check_finite(name, _dequantize(t.data[start:stop], t.tensor_type))
    return rows


def load_gguf(path: Path) -> Model:
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader
    check_gguf(path)  # counts and extents checked against the file before gguf-py allocates from them
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # gguf-py raises ValueError, struct.error, IndexError, ...
        raise LoadError(f"{path.name} is not a readable GGUF file: {e}",
                        hint="the file is corrupt or truncated; re-download it") from e
    config = config_from_gguf(reader)
    source: dict = {"format": "gguf"}
    pre = _field(reader, "tokenizer.ggml.pre")
    if pre:  # llama.cpp's pre-tokenizer name; transformers' conversion does not keep it
        source["tokenizer_pre"] = str(pre)
    model = Model(config, _tokenizer(path, reader), source=source)
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name in SKIP:
                continue
            raise UnsupportedModelError(f"GGUF tensor '{t.name[:80]}' has no Llama-family equivalent",
                                        hint="this GGUF holds an architecture variant cllm does not know")
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        heads = None
        if config.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_heads if "q_proj" in name else config.num_kv_heads
        dtype = {Q.F16: "f16", Q.BF16: "bf16"}.get(t.tensor_type, "f32")
        # Row reads need rows in file order: not for q/k, whose rows llama.cpp permuted.
        rows = _row_loader(t, name) if heads is None and len(shape) == 2 else None
        model.add(TensorNode(name, shape, Dense(shape, dtype, loader=_loader(t, name, heads), row_loader=rows)))
    check_tensors(model, path.name)
    return model
