"""Run a Llama-family model one decoder layer at a time, with Hugging Face's own layer modules.

Only one layer's weights are dense at a time, and hooks see every linear's input: this is how
calibration collects statistics on a model larger than memory, and how it stays faithful to the
reference runner (the same modules `backends/torch_ref.py` builds).
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterator

import torch

from .ir import Model

_CLASSES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# Called with (tensor name of the linear, its input rows [tokens, in_features]).
InputHook = Callable[[str, torch.Tensor], None]


def _modules(arch: str):
    mod = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    p = _CLASSES[arch]
    return getattr(mod, f"{p}DecoderLayer"), getattr(mod, f"{p}RotaryEmbedding"), getattr(mod, f"{p}RMSNorm")


# Gives a tensor's float32 weights by name (default: its current representation, decoded).
Weights = Callable[[str], torch.Tensor]


def _load(module: torch.nn.Module, model: Model, prefix: str, weights: Weights | None = None) -> None:
    get = weights or (lambda name: model.tensors[name].rep.decode())
    module.load_state_dict({k: get(prefix + k) for k in module.state_dict()})


def layer(model: Model, index: int, weights: Weights | None = None) -> torch.nn.Module:
    """Decoder layer `index` as a float32 HF module holding `weights` (eval mode)."""
    from .backends.torch_ref import hf_config
    cfg = hf_config(model.config)
    cfg._attn_implementation = "sdpa"
    module = _modules(model.config.arch)[0](cfg, index).eval()
    _load(module, model, f"model.layers.{index}.", weights)
    return module


def layers(model: Model) -> Iterator[tuple[int, torch.nn.Module]]:
    """Each decoder layer as a float32 HF module holding its decoded weights (built on demand)."""
    for i in range(model.config.num_layers):
        yield i, layer(model, i)


def embed(model: Model, ids: torch.Tensor, weights: Weights | None = None) -> torch.Tensor:
    """Token embeddings [nseq, seqlen, hidden] of `ids` from `weights` (default: decoded)."""
    name = "model.embed_tokens.weight"
    return torch.nn.functional.embedding(ids, weights(name) if weights else model.tensors[name].rep.decode())


def rotary(model: Model, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [1, seqlen, head_dim] for positions 0..seqlen-1, as the HF model computes them."""
    from .backends.torch_ref import hf_config
    cfg = hf_config(model.config)
    probe = torch.zeros(1, seqlen, model.config.hidden_size)
    return _modules(model.config.arch)[1](cfg)(probe, torch.arange(seqlen)[None])


def run(model: Model, ids: torch.Tensor, hook: InputHook | None = None,
        batch: int = 8) -> torch.Tensor:
    """Final-norm hidden states [nseq, seqlen, hidden] of `ids` [nseq, seqlen]; `hook` sees the
    input of every linear (and of lm_head) in execution order. Hidden states of all sequences are
    kept between layers, so memory is tokens x hidden floats plus one layer."""
    norm_cls = _modules(model.config.arch)[2]
    h = embed(model, ids)
    cos_sin = rotary(model, ids.shape[1])
    with torch.no_grad():  # not inference_mode: hooks keep tensors that are updated later
        for i, layer in layers(model):
            handles = _attach(layer, i, hook) if hook else []
            for s in range(0, h.shape[0], batch):
                h[s:s + batch] = layer(h[s:s + batch], position_embeddings=cos_sin)
            for handle in handles:
                handle.remove()
        norm = norm_cls(model.config.hidden_size, eps=model.config.rms_norm_eps)
        _load(norm, model, "model.norm.")
        h = norm(h)
        if hook:
            hook("lm_head.weight", h.reshape(-1, h.shape[-1]))
    return h


def _attach(layer: torch.nn.Module, index: int, hook: InputHook) -> list:
    handles = []
    for path in LINEARS:
        name = f"model.layers.{index}.{path}.weight"
        mod = layer.get_submodule(path)
        handles.append(mod.register_forward_pre_hook(
            lambda m, args, name=name: hook(name, args[0].reshape(-1, args[0].shape[-1]))))
    return handles


def logits(model: Model, hidden: torch.Tensor) -> torch.Tensor:
    """lm_head applied to `run`'s output (tied embeddings allowed)."""
    name = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    return hidden @ model.tensors[name].rep.decode().T
