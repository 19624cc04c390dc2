"""PyTorch reference runner: decode the IR to dense weights and run Hugging Face's modeling code.

This is the ground truth every other backend is compared against (CPU, float32).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import EvalError
from ..ir import Model, ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """RoPE inverse frequencies exactly as transformers computes them (float32)."""
    exps = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).to(torch.float32) / cfg.head_dim
    return 1.0 / (cfg.rope_theta ** exps)


def hf_config(cfg: ModelConfig):
    import transformers
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[cfg.arch]
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
              max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
              rope_theta=cfg.rope_theta, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    if cfg.arch == "llama":
        kw["attention_bias"] = cfg.attention_bias
    if cfg.arch == "mistral":
        kw["sliding_window"] = None
    return cls(**kw)


def build_torch_model(model: Model, weights: Callable[[str], torch.Tensor] | None = None) -> torch.nn.Module:
    """A transformers causal LM holding the IR's decoded weights (float32, eval mode), or those
    `weights` gives by tensor name (e.g. the source weights, for a float teacher)."""
    from transformers import AutoModelForCausalLM
    config = hf_config(model.config)
    config._attn_implementation = "sdpa"
    with torch.device("cpu"):
        net = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    sd = {}
    for node in model:
        sd[node.name] = weights(node.name) if weights else node.rep.decode()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    allowed = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - allowed:
        raise EvalError(f"IR does not match the {model.config.arch} module: missing {sorted(set(missing) - allowed)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}", hint="the loader's tensor names are wrong for this model")
    if model.config.tie_word_embeddings:
        net.tie_weights()
    return net.eval()
