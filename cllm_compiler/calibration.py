"""Per-linear input statistics from calibration text: what GPTQ, Wanda, SparseGPT, SVD-LLM and
the allocator consume.

For each linear with input x (rows = calibration tokens) we keep H = sum x x^T (the Hessian
proxy of the layer's output error) and sum |x| per input channel. Linears that read the same
input (q/k/v, gate/up) share one entry. Stored as safetensors, keyed by what produced them.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_path
from .errors import PassError

# Linears whose input is another linear's input in the Llama block.
_SHARED_INPUT = {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
                 "mlp.up_proj": "mlp.gate_proj"}
FILE = "calibration.safetensors"


def input_key(name: str) -> str:
    """The statistics entry `name`'s input lives under (k/v -> q, up -> gate)."""
    for src, dst in _SHARED_INPUT.items():
        if f".{src}.weight" in name:
            return name.replace(f".{src}.", f".{dst}.")
    return name


@dataclass
class Calibration:
    key: dict[str, object]  # what produced these statistics (model hash, text hash, tokens, seqlen)
    hessian: dict[str, torch.Tensor] = field(default_factory=dict)  # sum x x^T, float32 [in, in]
    absmean: dict[str, torch.Tensor] = field(default_factory=dict)  # mean |x| per channel [in]
    tokens: int = 0
    alias: dict[str, str] = field(default_factory=dict)  # e.g. tied embedding -> lm_head

    def observe(self, name: str, x: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add rows `x` [tokens, in]; `weight` [tokens] scales each token's share of H."""
        if input_key(name) != name:
            return
        x = x.to(torch.float32)
        if name not in self.hessian:
            self.hessian[name] = torch.zeros(x.shape[1], x.shape[1])
            self.absmean[name] = torch.zeros(x.shape[1])
        self.hessian[name].addmm_((x * weight[:, None]).T if weight is not None else x.T, x)
        # absmean holds sums until `finish` divides by the token count
        self.absmean[name] += x.abs().sum(0)

    def finish(self, tokens: int) -> None:
        self.tokens = tokens
        for k in self.absmean:
            self.absmean[k] /= tokens

    def _key(self, name: str) -> str:
        return self.alias.get(name) or input_key(name)

    def has(self, name: str) -> bool:
        return self._key(name) in self.hessian

    def H(self, name: str) -> torch.Tensor:
        try:
            return self.hessian[self._key(name)]
        except KeyError:
            raise PassError("no calibration statistics for this tensor", tensor=name,
                            hint="put calibrate before this pass, and match only linears (and lm_head)") from None

    def mean_abs(self, name: str) -> torch.Tensor:
        self.H(name)  # same error when missing
        return self.absmean[self._key(name)]

    def input_energy(self, name: str) -> torch.Tensor:
        """Per-channel sum of x_j^2 over the calibration tokens (H's diagonal): the weight of
        column j's error in the layer's output error."""
        return self.H(name).diagonal().clamp_min(0)

    def input_mean_sq(self, name: str) -> torch.Tensor:
        """Per-channel mean x_j^2 over the calibration tokens: what llama.cpp's imatrix holds."""
        return self.input_energy(name) / max(self.tokens, 1)

    def input_norm(self, name: str) -> torch.Tensor:
        """Per-channel input L2 norm over the calibration tokens (Wanda's ||x_j||)."""
        return self.input_energy(name).sqrt()

    def output_sq_error(self, name: str, delta: torch.Tensor, rows: torch.Tensor | None = None) -> float:
        """sum over calibration tokens of w_t ||delta @ x_t||^2 = tr(delta H delta^T), without the
        tokens (w_t: each sequence's first token, the attention sink, weighs calibrate's sink=);
        with `rows`, output channel c's error counts rows[c] times (e.g. the loss's sensitivity)."""
        H = self.H(name)
        total = 0.0
        for r in range(0, delta.shape[0], 4096):
            d = delta[r:r + 4096].to(torch.float32)
            per_row = ((d @ H) * d).sum(1, dtype=torch.float64)
            total += float(per_row.sum() if rows is None else (per_row * rows[r:r + 4096].double()).sum())
        return total

    def output_mse(self, name: str, delta: torch.Tensor) -> float:
        """Mean squared error per output element on the calibration tokens."""
        return self.output_sq_error(name, delta) / max(self.tokens * delta.shape[0], 1)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file
        # H is symmetric: store its upper triangle only (halves a file that is in^2 floats per input)
        tensors = {f"{k}::H": v[tuple(torch.triu_indices(*v.shape))].contiguous() for k, v in self.hessian.items()}
        tensors |= {f"{k}::absmean": v.contiguous() for k, v in self.absmean.items()}
        tensors = dict(sorted(tensors.items()))  # same bytes whether collected or loaded from a cache
        # one metadata entry: safetensors writes several in hash-map order, so the bytes would vary
        meta = {"cllm": json.dumps({"key": json.dumps(self.key, sort_keys=True), "tokens": str(self.tokens),
                                    "alias": json.dumps(self.alias, sort_keys=True)}, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: Path, key: dict[str, object]) -> "Calibration | None":
        """The cached statistics at `path` if they were made from exactly `key`, else None."""
        from safetensors import safe_open
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                meta = json.loads(meta["cllm"]) if "cllm" in meta else meta
                if meta.get("key") != json.dumps(key, sort_keys=True):
                    return None
                cal = cls(key, tokens=int(meta["tokens"]), alias=dict(json.loads(meta["alias"])))
                for name in f.keys():
                    base, kind = re.fullmatch(r"(.+)::(H|absmean)", name).groups()  # type: ignore[union-attr]
                    t = f.get_tensor(name)
                    if kind == "H":
                        n = int((math.isqrt(8 * t.numel() + 1) - 1) // 2)
                        full = torch.zeros(n, n)
                        iu = tuple(torch.triu_indices(n, n))
                        full[iu] = t
                        full.T[iu] = t
                        t = full
                    (cal.hessian if kind == "H" else cal.absmean)[base] = t
                return cal
        except Exception:  # noqa: BLE001  (safetensors raises its own error types)
            return None  # a damaged cache is recomputed, never trusted
