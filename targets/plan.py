"""Per-target compression plans: the pipeline and budget chosen from the target's facts
(memory, bandwidth, the formats its backend runs) and the model's size.

1. Weights may take `weight_memory_share` of the device memory, less a KV cache at `plan_context`.
2. Decode streams every weight byte per token: to reach `min_decode_tok_s` at the target's
   bandwidth, bytes per token must stay under bandwidth / that rate.
3. The smaller of the two caps, in bits/weight, bounds the plan. If the target's uniform
   pipeline (GPTQ int4 at the backend's group size, embedding int8) fits, it is used; else
   the allocator picks per-tensor bits for a budget at the cap; below 2 bits/weight the model
   does not fit and the plan says so before any work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import TargetError
from . import Target

MIN_BPW = 2.0


@dataclass(frozen=True)
class Plan:
    target: str
    pipeline: str
    budget_bpw: float | None
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "pipeline": self.pipeline, "budget_bpw": self.budget_bpw,
                "reasons": list(self.reasons)}


def _facts(target: Target) -> dict[str, Any]:
    f = {"group": 128, "weight_memory_share": 0.5, "min_decode_tok_s": 20.0, "context": 2048, "codec": "auto"}
    f.update(target.extra.get("plan", {}))
    return f


def uniform_pipeline(target: Target, group: int, codec: str) -> tuple[str, float, float]:
    """(pipeline, nominal bits of a linear weight, of the embedding) for the backend's uniform plan."""
    if target.backend == "gguf":  # exact llama.cpp blocks: Q4_1 (fp16 scale + fp16 min) and Q8_0
        return ("calibrate,gptq{bits=4,group=32,zero=float},quant{bits=8,group=32,sym=true,match=embed|lm_head},entropy",
                4 + 32 / 32, 8 + 16 / 32)
    # the embedding and an untied output head (22% of a real model's weights) at 8 bits: left in
    # f32 + zstd, a head made the artifact larger than its Q4_K_M source
    embed = f",quant{{bits=8,group={group},match=embed|lm_head}}" if target.backend != "onnx" else ""
    # int4 codes + fp16 scale + 8-bit zero point per group
    return (f"calibrate,gptq{{bits=4,group={group}}}{embed},entropy{{codec={codec}}}", 4 + 24 / group,
            (8 + 24 / group) if embed else 4 + 24 / group)


def budget_pipeline(target: Target, bpw: float, group: int) -> str:
    if target.backend == "gguf":
        from ..cli.compile import GGUF_BUDGET_PIPELINE
        return GGUF_BUDGET_PIPELINE.format(budget=round(bpw, 2))
    bits = "2|4|8" if target.backend == "onnx" else "2|3|4|5|6|8"  # MatMulNBits: 2, 4, 8 bits
    return (f"calibrate,allocate{{budget={bpw:.2f},choices=bits={bits};group={group}}},"
            "gptq{match=linear|embed|lm_head},quant{match=embed|lm_head},entropy")


def plan(target: Target, params: int, embed_params: int, kv_bytes_per_token: int) -> Plan:
    f = _facts(target)
    mem = target.memory_gb * 1e9 * f["weight_memory_share"] - kv_bytes_per_token * f["context"]
    mem_bpw = mem * 8 / params
    bw_bpw = target.bandwidth_gbs * 1e9 / f["min_decode_tok_s"] * 8 / params
    cap = min(mem_bpw, bw_bpw)
    why = [f"memory: {f['weight_memory_share']:.0%} of {target.memory_gb:g} GB less a {f['context']}-token KV cache "
           f"-> weights <= {mem / 1e9:.2f} GB = {mem_bpw:.1f} bits/weight for {params / 1e6:.1f} M params",
           f"bandwidth: {target.bandwidth_gbs:g} GB/s at >= {f['min_decode_tok_s']:g} decode tok/s "
           f"-> <= {bw_bpw:.1f} bits/weight"]
    if cap < MIN_BPW:
        raise TargetError(f"the model ({params / 1e6:.0f} M params) does not fit {target.name}: its facts allow "
                          f"{cap:.2f} bits/weight, below the {MIN_BPW:g} this compiler can keep usable",
                          hint="choose a larger target or a smaller model; " + "; ".join(why))
    pipe, lin_bits, emb_bits = uniform_pipeline(target, int(f["group"]), str(f["codec"]))
    uniform = (lin_bits * (params - embed_params) + emb_bits * embed_params) / params
    if uniform <= cap:
        why.append(f"uniform plan fits: GPTQ int4 g{f['group'] if target.backend != 'gguf' else 32} "
                   f"~{uniform:.2f} bits/weight before entropy coding <= {cap:.1f}; formats: {', '.join(target.formats)}")
        return Plan(target.name, pipe, None, tuple(why))
    budget = round(min(cap, uniform), 2)
    why.append(f"uniform plan (~{uniform:.2f} bits/weight) exceeds the cap: allocator budget {budget} bits/weight")
    return Plan(target.name, budget_pipeline(target, budget, int(f["group"])), budget, tuple(why))


def plan_for_model(target: Target, model: Any) -> Plan:
    c = model.config
    embed = sum(n.numel for n in model if n.role in ("embed", "lm_head"))  # both take the embedding's format
    return plan(target, model.num_params, embed, 2 * c.num_layers * c.num_kv_heads * c.head_dim * 2)
