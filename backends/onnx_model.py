"""The Llama family as an exportable PyTorch module with explicit KV inputs and outputs.

ONNX needs a graph with plain tensors in and out, so instead of transformers' cache objects the
module takes `past_keys` / `past_values` [layers, batch, kv_heads, past, head_dim] and returns
the logits and the grown caches (`present_*`): one graph serves prefill (past = 0) and decode
(T = 1), with dynamic batch, T and past. Each linear weight is a buffer holding Wᵀ [K, N] under a
flat name (`w0`, `w1`, ...) so the exported graph has `MatMul(x, w_i)` with an initializer, which
`onnx_export` then swaps for `com.microsoft.MatMulNBits` over the IR's own codes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import Model, TensorNode
from .torch_ref import rope_inv_freq

PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def matmul_weights(model: Model) -> list[tuple[str, TensorNode]]:
    """(role, IR node) of every MatMul weight in graph order: buffer w{i} is entry i. The head's
    role is lm_head.weight; with tied embeddings its node is the embedding."""
    nodes = {n.name: n for n in model}
    names = [f"model.layers.{i}.{p}.weight" for i in range(model.config.num_layers) for p in PROJ]
    return [(n, nodes[n]) for n in names] + [("lm_head.weight", nodes.get("lm_head.weight")
                                              or nodes["model.embed_tokens.weight"])]


class OnnxLlama(nn.Module):
    def __init__(self, model: Model) -> None:
        super().__init__()
        self.cfg = c = model.config
        self.weight_names: list[str] = []  # buffer w{i} holds the transpose of IR node weight_names[i]
        self.index: dict[str, int] = {}
        for role, node in matmul_weights(model):
            self.index[role] = len(self.weight_names)
            self.register_buffer(f"w{len(self.weight_names)}", node.rep.decode().T.contiguous())
            self.weight_names.append(node.name)
        self.dense = nn.ParameterDict()  # norms, biases, embedding table: stay float
        self._dense_keys: dict[str, str] = {}
        for n in model:
            if not n.name.endswith("proj.weight") and n.name != "lm_head.weight":
                key = f"d{len(self._dense_keys)}"
                self._dense_keys[n.name] = key
                self.dense[key] = nn.Parameter(n.rep.decode(), requires_grad=False)
        self.register_buffer("inv_freq", rope_inv_freq(c))

    def _w(self, name: str) -> torch.Tensor:
        return getattr(self, f"w{self.index[name]}")

    def _d(self, name: str) -> torch.Tensor | None:
        key = self._dense_keys.get(name)
        return None if key is None else self.dense[key]

    def _lin(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = x @ self._w(name + ".weight")
        b = self._d(name + ".bias")
        return y if b is None else y + b

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self._d(name) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps))

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def forward(self, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor):
        c = self.cfg
        b, t = input_ids.shape
        past = past_keys.shape[3]
        pos = torch.arange(t, device=input_ids.device, dtype=torch.float32) + past
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos(), emb.sin()
        keys = torch.arange(t + past, device=input_ids.device)
        mask = keys[None, :] <= (torch.arange(t, device=input_ids.device) + past)[:, None]  # [T, P+T]
        x = F.embedding(input_ids, self._d("model.embed_tokens.weight"))
        rep = c.num_heads // c.num_kv_heads
        new_k, new_v = [], []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            h = self._norm(x, p + "input_layernorm.weight")
            q = self._lin(p + "self_attn.q_proj", h).view(b, t, c.num_heads, c.head_dim).transpose(1, 2)
            k = self._lin(p + "self_attn.k_proj", h).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
            v = self._lin(p + "self_attn.v_proj", h).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            k = torch.cat([past_keys[i], k], 2)
            v = torch.cat([past_values[i], v], 2)
            new_k.append(k)
            new_v.append(v)
            kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            s = (q @ kk.transpose(2, 3)) * (c.head_dim ** -0.5)
            s = s.masked_fill(~mask, float("-inf"))
            o = (torch.softmax(s, -1) @ vv).transpose(1, 2).reshape(b, t, -1)
            x = x + self._lin(p + "self_attn.o_proj", o)
            h = self._norm(x, p + "post_attention_layernorm.weight")
            x = x + self._lin(p + "mlp.down_proj", F.silu(self._lin(p + "mlp.gate_proj", h))
                              * self._lin(p + "mlp.up_proj", h))
        x = self._norm(x, "model.norm.weight")
        return x @ self._w("lm_head.weight"), torch.stack(new_k), torch.stack(new_v)
