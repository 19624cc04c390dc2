"""GPU runtime: a Llama-family decoder in PyTorch whose every matmul is a Triton kernel reading
the compressed weights (quant, codebook, VQ, N:M sparse, + low-rank) in place.

Decode is CUDA-graph friendly: a step has fixed shapes whatever the position (the KV cache is
static, [layers, batch, kv_heads, max_len, head_dim], attention masks the unwritten slots, the
position is a device tensor), so `DecodeGraph` captures one step and replays it. On a machine
without a GPU the same code runs on the CPU with TRITON_INTERPRET=1 (float32, slow): that is how
CI checks the runtime against the torch reference.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import BackendError
from ..ir import Model
from .torch_ref import rope_inv_freq
from .triton_layout import GpuWeight, is_matmul, lower_weight
from .triton_ops import matmul


class TritonLlama:
    def __init__(self, model: Model, device: str | torch.device = "cuda", batch: int = 1, max_len: int = 2048,
                 dtype: torch.dtype | None = None, progress: Callable[[str], None] | None = None,
                 torch_dense: bool = False) -> None:
        # torch_dense: dense weights through torch's own matmul (cuBLAS): the fp16 peer, same runtime
        self.cfg, self.device = model.config, torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.batch, self.max_len, self.torch_dense = batch, max_len, torch_dense
        nodes = {n.name: n for n in model}
        self.w: dict[str, GpuWeight] = {}
        self.dense: dict[str, torch.Tensor] = {}
        for i, (name, node) in enumerate(nodes.items()):
            if progress:
                progress(f"loading weights {i + 1}/{len(nodes)}")
            if is_matmul(name):
                self.w[name] = lower_weight(node.rep, node.shape, name).to(self.device)
            else:  # embeddings (a lookup), norms and biases: small or gathered, kept dense
                self.dense[name] = node.rep.decode().to(self.device, self.dtype)
        if "lm_head.weight" not in self.w:  # tied head: the embedding table, as a kernel weight
            emb = nodes["model.embed_tokens.weight"]
            self.w["lm_head.weight"] = lower_weight(emb.rep, emb.shape, emb.name).to(self.device)
        c = self.cfg
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), rope_inv_freq(c))
        emb = torch.cat([freqs, freqs], -1)
        self.cos, self.sin = emb.cos().to(self.device, self.dtype), emb.sin().to(self.device, self.dtype)
        shape = (c.num_layers, batch, c.num_kv_heads, max_len, c.head_dim)
        self.k_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)

    def weight_bytes(self) -> int:
        return sum(g.nbytes() for g in self.w.values())

    def _lin(self, name: str, x: torch.Tensor) -> torch.Tensor:
        g = self.w[name + ".weight"]
        y = x @ g.tensors["w"].to(x.dtype) if self.torch_dense and g.spec.kind == "dense" else matmul(x, g)
        bias = self.dense.get(name + ".bias")
        return y if bias is None else y + bias

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        return (self.dense[name].float() * xf).to(self.dtype)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2  # x [B, H, T, hd]; cos/sin rows [T, hd] broadcast over B and H
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * self.cos[positions] + rot * self.sin[positions]

    def _attn(self, i: int, h: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c, p = self.cfg, f"model.layers.{i}."
        b, t, _ = h.shape
        q = self._lin(p + "self_attn.q_proj", h).view(b, t, c.num_heads, c.head_dim).transpose(1, 2)
        k = self._lin(p + "self_attn.k_proj", h).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self._lin(p + "self_attn.v_proj", h).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q, k = self._rope(q, positions), self._rope(k, positions)
        self.k_cache[i].index_copy_(2, positions, k)  # fixed shapes: graph-capturable
        self.v_cache[i].index_copy_(2, positions, v)
        o = F.scaled_dot_product_attention(q, self.k_cache[i][:b], self.v_cache[i][:b], attn_mask=mask,
                                           enable_gqa=c.num_heads != c.num_kv_heads)
        return self._lin(p + "self_attn.o_proj", o.transpose(1, 2).reshape(b, t, -1))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits [B, T, V] (or [B, 1, V]) for ids [B, T] at cache slots `positions` [T]."""
        if ids.shape[0] > self.batch:
            raise BackendError(f"batch {ids.shape[0]} exceeds the runtime's {self.batch}",
                               hint="create the runtime with a larger batch")
        x = self.dense["model.embed_tokens.weight"][ids]
        slots = torch.arange(self.max_len, device=self.device)
        mask = slots[None, :] <= positions[:, None]  # [T, max_len]: causal over what is written; one per step
        for i in range(self.cfg.num_layers):
            p = f"model.layers.{i}."
            x = x + self._attn(i, self._norm(x, p + "input_layernorm.weight"), positions, mask)
            h = self._norm(x, p + "post_attention_layernorm.weight")
            g = self._lin(p + "mlp.gate_proj", h)
            x = x + self._lin(p + "mlp.down_proj", F.silu(g.float()).to(self.dtype) * self._lin(p + "mlp.up_proj", h))
        x = self._norm(x, "model.norm.weight")
        if last_only:
            x = x[:, -1:]
        return matmul(x, self.w["lm_head.weight"], out_dtype=torch.float32)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, start: int = 0, last_only: bool = True) -> torch.Tensor:
        if start + ids.shape[1] > self.max_len:
            raise BackendError(f"{start + ids.shape[1]} tokens exceed the KV cache ({self.max_len})",
                               hint="create the runtime with a larger max_len")
        pos = torch.arange(start, start + ids.shape[1], device=self.device)
        return self.forward(ids.to(self.device), pos, last_only)


class DecodeGraph:
    """One decode step (batch B, one token each) captured as a CUDA graph and replayed."""

    def __init__(self, net: TritonLlama) -> None:
        self.net = net
        self.ids = torch.zeros((net.batch, 1), dtype=torch.long, device=net.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=net.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        self.ids.copy_(ids.view(self.net.batch, 1))
        self.pos.fill_(pos)
        if self.net.device.type != "cuda":
            return self.net.forward(self.ids, self.pos)
        if self.graph is None:  # warm up on a side stream (compiles the kernels), then capture
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                self.net.forward(self.ids, self.pos)
            torch.cuda.current_stream().wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.net.forward(self.ids, self.pos)
        self.graph.replay()
        return self.out  # type: ignore[return-value]
