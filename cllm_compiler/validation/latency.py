"""Latency of backend runners on this machine: prefill, time to first token and decode, as
distributions over interleaved repeats (runner A, B, A, B, ...: drift and noise hit all alike)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..measure import distribution, measured


class TorchRunner:
    """The torch reference of an artifact behind the runners' `speed(prompt, n)` interface, also
    batched (the CPU backends run batch 1 only)."""

    def __init__(self, net: torch.nn.Module, n_ctx: int = 2048) -> None:
        self.net, self.n_ctx = net, n_ctx

    def __call__(self, x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return self.net(x)

    def speed(self, prompt: list[int], new_tokens: int = 16, batch: int = 1) -> dict[str, float]:
        ids = torch.tensor([prompt] * batch)
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.net(ids, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            t1 = time.perf_counter()
            past = out.cache  # transformers >= 5.2x: `cache` (past_key_values is deprecated)
            for _ in range(new_tokens):
                out = self.net(tok, cache=past, use_cache=True)
                past, tok = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
        return {"prefill_tok_s": len(prompt) * batch / (t1 - t0), "decode_tok_s": new_tokens * batch / (t2 - t1)}

    def close(self) -> None:
        pass


def time_runners(runners: dict[str, Any], prompt: list[int], new_tokens: int, repeats: int,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, Any]]:
    """Per runner: prefill ms, TTFT ms and decode ms/token distributions (p50/p95/CV, samples)."""
    for r in runners.values():  # warm-up: first-call allocation and caches are not latency
        r.speed(prompt[:8], 2)
    pre: dict[str, list[float]] = {k: [] for k in runners}
    dec: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(repeats):
        for name, r in runners.items():
            s = r.speed(prompt, new_tokens)
            pre[name].append(1e3 * len(prompt) / s["prefill_tok_s"])
            dec[name].append(1e3 / s["decode_tok_s"])
        if progress:
            progress(i + 1, repeats)
    meter = "time.perf_counter on this host, wall clock"
    out = {}
    for name in runners:
        p, d = distribution(pre[name], "ms", meter), distribution(dec[name], "ms/token", meter)
        out[name] = {"prefill_ms": p, "ttft_ms": {**p, "note": "prefill of the prompt yields the first token"},
                     "decode_ms_per_token": d, "prompt_tokens": len(prompt), "new_tokens": new_tokens,
                     "prefill_tok_s": 1e3 * len(prompt) / p["p50"], "decode_tok_s": 1e3 / d["p50"]}
    return out


def ratios(lat: dict[str, dict[str, Any]], peer: str) -> dict[str, dict[str, float]]:
    """p50 speed of each runner over the peer's, measured in the same interleaved run (> 1: faster)."""
    if peer not in lat:
        return {}
    base = lat[peer]
    return {name: {"decode": base["decode_ms_per_token"]["p50"] / v["decode_ms_per_token"]["p50"],
                   "prefill": base["prefill_ms"]["p50"] / v["prefill_ms"]["p50"]}
            for name, v in lat.items() if name != peer}


def batch_sweep(runner: TorchRunner, prompt: list[int], new_tokens: int, batches: tuple[int, ...]) -> dict[str, Any]:
    """Decode tokens/s (all sequences) at each batch size, one run each after a warm-up."""
    runner.speed(prompt[:8], 2, batch=max(batches))
    rows = {str(b): runner.speed(prompt, new_tokens, batch=b)["decode_tok_s"] for b in batches}
    return measured(rows, "tokens/s", "time.perf_counter on this host", runner="torch reference (fp32, batched)",
                    prompt_tokens=len(prompt), new_tokens=new_tokens)
