"""GGUF metadata for the Llama family: architecture keys and the tokenizer (vocab, merges,
special tokens, pre-tokenizer, chat template), with the checks that must pass before a byte
is written."""
from __future__ import annotations

import json
from typing import Any

from ..errors import BackendError
from ..ir import Model

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # llama.cpp runs Mistral as llama
# llama.cpp's pre-tokenizer names for the pre_tokenizer layouts HF tokenizers use
_SPLIT_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


def gguf_arch(model: Model) -> str:
    arch = GGUF_ARCH.get(model.config.arch)
    if arch is None:
        raise BackendError(f"GGUF has no mapping for architecture '{model.config.arch}'",
                           hint=f"the GGUF backend writes {', '.join(sorted(GGUF_ARCH))}; use another target")
    return arch


def arch_meta(w: Any, model: Model) -> None:
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


def pre_tokenizer(tj: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (how text is split before BPE)."""
    pre = tj.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"]:
        return "gpt-2"
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if types and types[0] == "Split":
        return _SPLIT_PRE.get(parts[0].get("pattern", {}).get("Regex", ""), "default")
    return "default"


def tokenizer_meta(w: Any, model: Model) -> list[str]:
    """Write the tokenizer; return notes on anything approximated."""
    tok = model.tokenizer
    if tok is None:
        return ["no tokenizer in the artifact: the GGUF has none (llama.cpp needs one to run text)"]
    tj = json.loads(tok.tokenizer_json)
    m = tj.get("model", {})
    if m.get("type") != "BPE":
        raise BackendError(f"tokenizer type {m.get('type')!r} cannot be written to GGUF yet",
                           hint="the GGUF backend writes byte-level BPE tokenizers (Llama 3, SmolLM, Qwen2)")
    tokens, special = token_list(tj, model.config.vocab_size)
    merges = [mm if isinstance(mm, str) else " ".join(mm) for mm in m.get("merges", [])]
    if not merges:  # gguf-py drops an empty array, and llama.cpp refuses a "gpt2" vocabulary without it
        raise BackendError("the tokenizer is BPE without merges: llama.cpp cannot load such a GGUF vocabulary",
                           hint="use a target with another backend (e.g. --target host), or a tokenizer with merges")
    w.add_tokenizer_model("gpt2")
    pre = str(model.source.get("tokenizer_pre") or pre_tokenizer(tj))  # a GGUF source's own name wins
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    if model.config.bos_token_id is not None:
        w.add_bos_token_id(int(model.config.bos_token_id))
    if model.config.eos_token_id is not None:
        w.add_eos_token_id(int(model.config.eos_token_id))
    w.add_add_bos_token(tok.add_bos)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)
    return [] if pre != "default" else ["pre-tokenizer not recognised: llama.cpp will split text its default way"]


def token_list(tj: dict[str, Any], vocab_size: int) -> tuple[list[str], set[str]]:
    """Token strings by id (padded to the embedding's rows) and the special ones."""
    vocab = dict(tj["model"]["vocab"])
    special = {t["content"] for t in tj.get("added_tokens", []) if t.get("special", True)}
    vocab.update({t["content"]: t["id"] for t in tj.get("added_tokens", [])})
    n = max(vocab.values()) + 1
    if n > vocab_size:
        raise BackendError(f"the tokenizer has {n} tokens but the embedding has {vocab_size} rows",
                           tensor="model.embed_tokens.weight", hint="the tokenizer belongs to another model")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    for t, i in vocab.items():
        tokens[i] = t
    return tokens, special | {t for t in tokens if t.startswith("[PAD")}
