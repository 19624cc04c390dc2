"""Generation and speed on the GPU: greedy decode through a captured CUDA graph, with tokens/s
and J/token from NVML's energy counter measured around the same decode run."""
from __future__ import annotations

import time
from typing import Any

import torch

from .nvml_energy import EnergyMeter
from .triton_model import DecodeGraph, TritonLlama


def _sync(net: TritonLlama) -> None:
    if net.device.type == "cuda":
        torch.cuda.synchronize(net.device)


@torch.inference_mode()
def generate_ids(net: TritonLlama, prompt: list[int], new_tokens: int, eos: int | None = None,
                 step: DecodeGraph | None = None) -> list[int]:
    """Greedy continuation of one prompt (batch row 0; other rows repeat it)."""
    ids = torch.tensor([prompt] * net.batch, device=net.device)
    logits = net.prefill(ids)
    step = step or DecodeGraph(net)
    out: list[int] = []
    pos = len(prompt)
    for _ in range(new_tokens):
        nxt = logits[:, -1].argmax(-1)
        out.append(int(nxt[0]))
        if out[-1] == eos or pos >= net.max_len:
            break
        logits = step(nxt, pos)
        pos += 1
    return out


def decode_speed(net: TritonLlama, prompt: list[int], new_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Median prefill and decode tokens/s (all batch rows counted) and decode J/token."""
    prompt = prompt[: net.max_len - new_tokens - 1]
    ids = torch.tensor([prompt] * net.batch, device=net.device)
    step = DecodeGraph(net)
    generate_ids(net, prompt[:8], 2, step=step)  # warm-up: JIT compile, graph capture
    pre, dec, joules, raws = [], [], [], []
    meter_src = ""
    for _ in range(repeats):
        _sync(net)
        t = time.perf_counter()
        logits = net.prefill(ids)
        _sync(net)
        pre.append(len(prompt) * net.batch / (time.perf_counter() - t))
        nxt = logits[:, -1].argmax(-1)
        with EnergyMeter(net.device.index or 0) if net.device.type == "cuda" else _NoMeter() as meter:
            for i in range(new_tokens):
                nxt = step(nxt, len(prompt) + i)[:, -1].argmax(-1)
            _sync(net)
        e = meter.result
        dec.append(new_tokens * net.batch / e.seconds)
        meter_src = e.source
        if e.joules is not None:
            joules.append(e.joules / (new_tokens * net.batch))
            raws.append({"joules": e.joules, "seconds": round(e.seconds, 6), **e.raw})
    med = lambda v: sorted(v)[len(v) // 2] if v else None  # noqa: E731
    return {"prefill_tok_s": round(med(pre), 1), "decode_tok_s": round(med(dec), 1),
            "decode_j_per_token": None if not joules else round(med(joules), 5), "energy_source": meter_src,
            "energy_raw": raws,
            "batch": net.batch, "prompt_tokens": len(prompt), "new_tokens": new_tokens, "repeats": repeats,
            "weight_bytes_read": net.weight_bytes(), "cuda_graph": net.device.type == "cuda",
            "label": f"measured: Triton kernels on {_device_name(net)}"}


def _device_name(net: TritonLlama) -> str:
    if net.device.type == "cuda":
        return torch.cuda.get_device_name(net.device)
    return "the CPU (Triton interpreter)"


class _NoMeter(EnergyMeter):
    def __init__(self) -> None:
        super().__init__()
        self.reason = "no energy reading: not on a GPU"
        self.result.source = self.reason
