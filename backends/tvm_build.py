"""Build the TVM executable of a model: IR -> weight arrays + Relax module -> scheduled, compiled library."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import BackendError
from ..ir import LINEAR_ROLES, Model
from .tvm_layout import Layout, lower_weight

DEFAULT_MAX_LEN = 2048


@dataclass
class Lowered:
    """What a build needs: the Relax module, its parameters in call order, the layouts used."""

    mod: Any
    params: list[tuple[str, np.ndarray]]
    layouts: dict[str, Layout]
    max_len: int
    notes: list[str] = field(default_factory=list)


MATMUL_ROLES = LINEAR_ROLES | {"embed", "lm_head"}  # weights the kernels read compressed


def check_model(model: Model) -> dict[str, Layout]:
    """Each matmul weight's layout, or a BackendError naming the tensor, without building anything."""
    return {n.name: lower_weight(n.rep, n.shape, n.name)[0] for n in model if n.role in MATMUL_ROLES}


def lower(model: Model, max_len: int = DEFAULT_MAX_LEN, progress: Callable[[str], None] | None = None,
          decode_int8: str = "") -> Lowered:
    """The Relax module and its parameter arrays (weights stay in their compressed layout).
    `decode_int8` (vnni | avx2): generation's matmuls of integer weights use int8 activations with that
    instruction set's integer dot products (tvm_int8); "" keeps them fp32."""
    from .tvm_model import LlamaTVM, inv_freq
    cfg = model.config  # ModelConfig admits only the Llama family, which LlamaTVM builds
    arrays: dict[str, np.ndarray] = {}
    lays: dict[str, Layout] = {}
    nodes = list(model)
    for i, node in enumerate(nodes):
        if progress:
            progress(f"lowering weights {i + 1}/{len(nodes)}")
        key = _param_key(node.name)
        if node.role in MATMUL_ROLES:
            lays[node.name], arrs = lower_weight(node.rep, node.shape, node.name, int8=decode_int8)
            arrays.update({f"{key}.{k}": v for k, v in arrs.items()})
        else:
            arrays[key] = node.rep.decode().numpy().astype(np.float32)
    arrays["inv_freq"] = inv_freq(cfg)
    net = LlamaTVM(cfg, lays, max_len)
    mod, named = net.export_tvm(spec=net.spec())
    missing = [n for n, _ in named if n not in arrays]
    if missing:
        raise BackendError(f"no weights for {missing[:3]}", hint="the IR lacks tensors this architecture needs")
    return Lowered(mod, [(n, arrays[n]) for n, _ in named], lays, max_len)


def _param_key(name: str) -> str:
    """HF tensor name -> the Relax module's parameter path."""
    short = {"self_attn.q_proj.weight": "q_proj", "self_attn.k_proj.weight": "k_proj",
             "self_attn.v_proj.weight": "v_proj", "self_attn.o_proj.weight": "o_proj",
             "mlp.gate_proj.weight": "gate_proj", "mlp.up_proj.weight": "up_proj",
             "mlp.down_proj.weight": "down_proj", "input_layernorm.weight": "input_norm",
             "post_attention_layernorm.weight": "post_norm", "self_attn.q_proj.bias": "q_proj_bias",
             "self_attn.k_proj.bias": "k_proj_bias", "self_attn.v_proj.bias": "v_proj_bias"}
    if name.startswith("model.layers."):
        i, rest = name[len("model.layers."):].split(".", 1)
        return f"layers.{i}.{short.get(rest, rest)}"
    return {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm", "lm_head.weight": "lm_head"}.get(name, name)


def compile_module(low: Lowered, target: dict[str, Any], progress: Callable[[str], None] | None = None) -> Any:
    """Schedule the kernels for `target` and compile; returns the tvm Executable."""
    import tvm
    from .tvm_schedule import schedule_module
    t0 = time.perf_counter()
    tgt = tvm.target.Target(target)
    if progress:
        progress("scheduling kernels")
    mod = schedule_module(low.mod, tgt)
    if progress:
        progress("compiling (LLVM)")
    ex = tvm.compile(mod, target=tgt)
    low.notes.append(f"compiled in {time.perf_counter() - t0:.1f} s for {tgt.kind.name}")
    return ex
