"""The Llama family in Relax (`tvm.relax.frontend.nn`), with weights in their compressed layout.

Exported functions (all take the token ids, the position of the first one and the KV cache,
a contiguous float32 tensor written in place, see tvm_kernels.cache_shape):

  prefill(ids[m], pos, cache)      -> logits of the last token [1, vocab] (generation)
  prefill_all(ids[m], pos, cache)  -> logits of every token [m, vocab] (evaluation: fp32 activations)
  decode(ids[1], pos, cache)       -> logits [1, vocab]; its matmuls are GEMV kernels (m = 1)

On targets with int8-activation decode, generation (prefill and decode) runs <= 4-bit weights with
int8 activations and integer dot products (tvm_int8), as llama.cpp does; evaluation stays fp32,
so the report's TVM-vs-torch check is exact and the generation path is measured on its own.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from tvm import tirx
from tvm.relax.frontend import nn

from ..ir import ModelConfig
from . import tvm_kernels as K
from .tvm_layout import Layout

F32 = "float32"
FUNCTIONS = ("prefill", "prefill_all", "decode")


@functools.lru_cache(maxsize=None)
def _matmul(lay: Layout, m: int | None, int8_rows: bool) -> tirx.PrimFunc:
    return K.matmul(lay, m, int8_rows).with_attr("op_pattern", 8).without_attr("global_symbol")  # opaque: FuseOps must not merge a scheduled kernel


@functools.lru_cache(maxsize=None)
def _kernel(name: str, *args: Any) -> tirx.PrimFunc:
    return getattr(K, name)(*args).with_attr("op_pattern", 8).without_attr("global_symbol")


class Weights(nn.Module):
    """The arrays of one compressed weight (see tvm_layout)."""

    def __init__(self, lay: Layout) -> None:
        self.lay = lay
        for suffix, shape, dtype in lay.arrays():
            setattr(self, suffix, nn.Parameter(shape, dtype))

    def arrays(self) -> list[nn.Tensor]:
        return [getattr(self, suffix) for suffix, _, _ in self.lay.arrays()]

    def matmul(self, x: nn.Tensor, fast: bool = False) -> nn.Tensor:
        """`fast`: int8 activations for every row of an int8 layout (generation's prefill)."""
        m = x.shape[0]
        static = m if isinstance(m, int) and m == 1 else None
        out = nn.Tensor.placeholder([m, self.lay.n], F32)
        name = f"matmul_{self.lay.tag}{'_i8rows' if fast and static is None and self.lay.int8 else ''}"
        return nn.op.tensor_ir_op(_matmul(self.lay, static, fast), name, [x, *self.arrays()], out)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, lays: dict[str, Layout], i: int, max_len: int) -> None:
        p = f"model.layers.{i}."
        self.cfg, self.index, self.max_len = cfg, i, max_len
        for short, full in _LINEARS.items():
            setattr(self, short, Weights(lays[p + full]))
        if cfg.attention_bias:
            for short in ("q_proj", "k_proj", "v_proj"):
                setattr(self, short + "_bias", nn.Parameter((lays[p + _LINEARS[short]].n,), F32))
        self.input_norm = nn.Parameter((cfg.hidden_size,), F32)
        self.post_norm = nn.Parameter((cfg.hidden_size,), F32)

    def _proj(self, name: str, x: nn.Tensor, heads: int, fast: bool) -> nn.Tensor:
        y = getattr(self, name).matmul(x, fast)
        if self.cfg.attention_bias:
            y = y + getattr(self, name + "_bias")
        return nn.op.reshape(y, [x.shape[0], heads, self.cfg.head_dim])

    def forward(self, x: nn.Tensor, pos: tirx.Var, cache: nn.Tensor, inv_freq: nn.Tensor,
                fast: bool = False) -> tuple[nn.Tensor, nn.Tensor]:
        c, m = self.cfg, x.shape[0]
        h = nn.op.rms_norm(x, self.input_norm, axes=[-1], epsilon=c.rms_norm_eps)
        q = self._rope(self._proj("q_proj", h, c.num_heads, fast), inv_freq, pos, c.num_heads)
        k = self._rope(self._proj("k_proj", h, c.num_kv_heads, fast), inv_freq, pos, c.num_kv_heads)
        v = self._proj("v_proj", h, c.num_kv_heads, fast)
        layer = tirx.IntImm("int64", self.index)
        cache = nn.op.tensor_ir_inplace_op(
            _kernel("kv_append", c.num_layers, c.num_kv_heads, c.head_dim, self.max_len), "kv_append",
            [cache, k, v, pos, layer], [0], nn.Tensor.placeholder(cache.shape, F32))
        att = nn.op.tensor_ir_op(
            _kernel("attention", c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, self.max_len), "attention",
            [q, cache, pos, layer], nn.Tensor.placeholder([m, c.num_heads, c.head_dim], F32))
        x = x + self.o_proj.matmul(nn.op.reshape(att, [m, c.num_heads * c.head_dim]), fast)
        h = nn.op.rms_norm(x, self.post_norm, axes=[-1], epsilon=c.rms_norm_eps)
        act = nn.op.silu(self.gate_proj.matmul(h, fast)) * self.up_proj.matmul(h, fast)
        return x + self.down_proj.matmul(act, fast), cache

    def _rope(self, x: nn.Tensor, inv_freq: nn.Tensor, pos: tirx.Var, heads: int) -> nn.Tensor:
        return nn.op.tensor_ir_op(_kernel("rope", heads, self.cfg.head_dim), "rope", [x, inv_freq, pos],
                                  nn.Tensor.placeholder(x.shape, F32))


_LINEARS = {"q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight",
            "v_proj": "self_attn.v_proj.weight", "o_proj": "self_attn.o_proj.weight",
            "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight", "down_proj": "mlp.down_proj.weight"}


class LlamaTVM(nn.Module):
    def __init__(self, cfg: ModelConfig, lays: dict[str, Layout], max_len: int) -> None:
        self.cfg, self.max_len = cfg, max_len
        self.embed = Weights(lays["model.embed_tokens.weight"])
        self.layers = nn.ModuleList([Block(cfg, lays, i, max_len) for i in range(cfg.num_layers)])
        self.norm = nn.Parameter((cfg.hidden_size,), F32)
        self.inv_freq = nn.Parameter((cfg.head_dim // 2,), F32)
        if not cfg.tie_word_embeddings:
            self.lm_head = Weights(lays["lm_head.weight"])

    def _head(self) -> Weights:
        return self.embed if self.cfg.tie_word_embeddings else self.lm_head  # tied: not a second parameter set

    def _hidden(self, ids: nn.Tensor, pos: tirx.Var, cache: nn.Tensor, fast: bool = False) -> nn.Tensor:
        lay = self.embed.lay
        x = nn.op.tensor_ir_op(_kernel("embed", lay), "embed", [ids, *self.embed.arrays()],
                               nn.Tensor.placeholder([ids.shape[0], lay.k], F32))
        for block in self.layers:
            x, cache = block(x, pos, cache, self.inv_freq, fast)
        return nn.op.rms_norm(x, self.norm, axes=[-1], epsilon=self.cfg.rms_norm_eps)

    def prefill_all(self, ids: nn.Tensor, pos: tirx.Var, cache: nn.Tensor) -> nn.Tensor:
        return self._head().matmul(self._hidden(ids, pos, cache))

    def prefill(self, ids: nn.Tensor, pos: tirx.Var, cache: nn.Tensor) -> nn.Tensor:
        x = self._hidden(ids, pos, cache, fast=True)  # generation: int8 activations where decode has them
        last = nn.op.tensor_ir_op(_kernel("last_row", self.cfg.hidden_size), "last_row", [x],
                                  nn.Tensor.placeholder([1, self.cfg.hidden_size], F32))
        return self._head().matmul(last)

    def decode(self, ids: nn.Tensor, pos: tirx.Var, cache: nn.Tensor) -> nn.Tensor:
        return self._head().matmul(self._hidden(ids, pos, cache))

    def spec(self) -> dict[str, Any]:
        c = self.cfg
        cache = nn.spec.Tensor(list(K.cache_shape(c.num_layers, c.num_kv_heads, c.head_dim, self.max_len)), F32)
        fn = lambda m: {"ids": nn.spec.Tensor([m], "int32"), "pos": nn.spec.Int(), "cache": cache}  # noqa: E731
        return {"prefill": fn("m"), "prefill_all": fn("m"), "decode": fn(1)}


def inv_freq(cfg: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies exactly as transformers computes them (float32)."""
    from .torch_ref import rope_inv_freq
    return rope_inv_freq(cfg).numpy().astype(np.float32)
