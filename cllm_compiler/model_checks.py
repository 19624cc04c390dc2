"""A model that cannot run is refused at load, naming what disagrees.

Config facts come from a file a user gave; nothing may be allocated from them before they are
checked against the tensors (a config claiming 10^9 layers or a 10^9 vocabulary made evaluation
ask for 256 GB). Two checks: the config's numbers on their own (`check_config`), then the
config against the tensors the file really holds (`check_tensors`): every expected tensor
present with its expected shape, nothing left over.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .errors import LoadError

if TYPE_CHECKING:
    from .ir import Model

# Upper bounds far above any released decoder (Llama 3.1 405B: 126 layers, hidden 16384,
# intermediate 53248; Gemma 3: 262k vocabulary), low enough that nothing is sized from nonsense.
LIMITS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_layers": 1024,
          "num_heads": 1024, "num_kv_heads": 1024, "head_dim": 1024, "max_position_embeddings": 1 << 24}
HINT = "the model's config disagrees with itself or its tensors; is the file damaged or hand-edited?"


def whole(v: Any) -> int:
    """A config count as read from a file: a whole number (JSON 32.0 is fine; 1.5, "8", null, lists,
    NaN and 1e400 raise ValueError/OverflowError for the loader to name)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise ValueError(f"{str(v)[:40]} is not a whole number")
    if abs(v) > 1 << 40:
        raise ValueError(f"{str(v)[:40]} is out of range")
    return int(v)


def check_config(c: Any) -> None:
    """LoadError unless every count is a whole number in range and the float facts are finite."""
    for key, top in LIMITS.items():
        v = getattr(c, key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise LoadError(f"config {key} = {str(v)[:40]} is not a whole number from 1 to {top}", hint=HINT)
    if c.num_heads % c.num_kv_heads:
        raise LoadError(f"config num_heads = {c.num_heads} is not a multiple of num_kv_heads = {c.num_kv_heads}",
                        hint=HINT)
    if c.head_dim % 2:
        raise LoadError(f"config head_dim = {c.head_dim} is odd; rotary embeddings need pairs", hint=HINT)
    for key, low in (("rope_theta", 1.0), ("rms_norm_eps", 0.0)):
        v = getattr(c, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v < 1e12 \
                or (key == "rms_norm_eps" and v >= 1):
            raise LoadError(f"config {key} = {str(v)[:40]} is not a usable number", hint=HINT)
    for key in ("bos_token_id", "eos_token_id"):
        v = getattr(c, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < c.vocab_size):
            raise LoadError(f"config {key} = {str(v)[:40]} is not a token id below vocab_size {c.vocab_size}",
                            hint=HINT)


def expected_shapes(c: Any) -> dict[str, tuple[int, ...]]:
    """The tensors a Llama-family decoder with this config holds (Hugging Face names)."""
    h, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, h), "model.norm.weight": (h,)}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = (c.vocab_size, h)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (c.intermediate_size, h), p + "mlp.up_proj.weight": (c.intermediate_size, h),
                p + "mlp.down_proj.weight": (h, c.intermediate_size)}
        if c.attention_bias:
            out |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.bias": (kv,)}
    return out


def check_tensors(model: "Model", where: str) -> None:
    """LoadError unless the tensors are exactly those the config describes, with its shapes."""
    want = expected_shapes(model.config)
    have = {n.name: tuple(n.shape) for n in model}
    missing = [n for n in want if n not in have]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise LoadError(f"{where} lacks a tensor its config implies{more}", tensor=missing[0],
                        hint=f"{HINT} (config: {model.config.num_layers} layers, hidden {model.config.hidden_size})")
    extra = [n for n in have if n not in want]
    if extra:
        raise LoadError(f"{where} holds a tensor its config does not describe", tensor=extra[0],
                        hint=f"{HINT} (config: {model.config.num_layers} layers"
                             f"{', tied output head' if model.config.tie_word_embeddings else ''})")
    for name, shape in want.items():
        if have[name] != shape:
            raise LoadError(f"{where}: shape {list(have[name])}, but the config implies {list(shape)}",
                            tensor=name, hint=HINT)


def check_finite(name: str, w: Any) -> Any:
    """The decoded tensor, or a LoadError naming it if it holds NaN or infinity (a model that
    cannot run must not compile into an artifact that evaluates to PPL nan)."""
    import torch
    if w.is_floating_point() and not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise LoadError(f"{bad} of {w.numel()} weights are NaN or infinite", tensor=name,
                        hint="the checkpoint is damaged (or a training run diverged); use an earlier one")
    return w
