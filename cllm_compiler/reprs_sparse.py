"""`Sparse`: a pruned weight as a keep-mask plus the kept values, which are themselves any
representation (f16, or quantized by a later `quant` pass: 2:4 + int4).

Every row keeps the same number k of weights (N:M structured, or a per-row fraction), so the
kept values form a [rows, k] matrix in row-major order of the mask. The mask is 1 bit per
weight on disk before coding; N:M masks then go through the `nm-mask` codec (<= log2 C(M,N)
bits per M weights).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import packing
from .reprs import (Buffers, REPRESENTATIONS, Representation, describe_record, register_rep, rep_from_record,
                    specs_of)


@register_rep
class Sparse(Representation):
    kind = "sparse"

    def __init__(self, mask: np.ndarray, values: Representation, n: int = 0, m: int = 0) -> None:
        self.mask, self.values, self.n, self.m = mask.astype(bool), values, n, m
        keep = self.mask.sum(1)
        if keep.size and (keep != keep[0]).any():
            raise ValueError("every row must keep the same number of weights")
        self.k = int(keep[0]) if keep.size else 0

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}" if self.m else ""

    def decode(self) -> torch.Tensor:
        out = torch.zeros(self.mask.shape)
        out[torch.from_numpy(self.mask)] = self.values.decode().reshape(-1)
        return out

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        vmeta, vbufs = self.values.to_record()
        meta = {"n": self.n, "m": self.m, "k": self.k, "values": {"kind": self.values.kind, "meta": vmeta}}
        bufs = {"mask": packing.pack(self.mask.reshape(-1).astype(np.uint8), 1)}
        bufs |= {f"values.{name}": b for name, b in vbufs.items()}
        return meta, bufs

    @classmethod
    def _check(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, int, int, str]:
        rows, cols = shape
        n, m, k = int(meta["n"]), int(meta["m"]), int(meta["k"])
        if not (0 <= k <= cols and (m == 0 or (0 < n < m <= 8 and cols % m == 0 and k == cols * n // m))):
            raise ValueError(f"sparse meta out of range: n={n} m={m} k={k}")
        kind = meta["values"]["kind"]
        if kind not in REPRESENTATIONS or kind in ("sparse", "encoded", "lowrank"):
            raise ValueError(f"sparse values cannot be '{kind}'")
        return n, m, k, kind

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "Sparse":
        n, m, k, kind = cls._check(meta, shape)
        rows, cols = shape
        mask = packing.unpack(buffers["mask"], 1, rows * cols).reshape(rows, cols).astype(bool)
        vb = {name[len("values."):]: b for name, b in buffers.items() if name.startswith("values.")}
        values = rep_from_record(kind, meta["values"]["meta"], vb, (rows, k))
        return cls(mask, values, n, m)

    @classmethod
    def specs_for(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        from .codecs import BufferSpec
        n, m, k, kind = cls._check(meta, shape)
        specs = {"mask": BufferSpec("mask", 1, math.prod(shape), f"{n}:{m}" if m else "")}
        inner = specs_of(kind, meta["values"]["meta"], (shape[0], k))
        return specs | {f"values.{name}": s for name, s in inner.items()}

    @staticmethod
    def describe_meta(meta: dict[str, Any], shape: tuple[int, ...] | None = None) -> str:
        n, m = int(meta["n"]), int(meta["m"])
        pat = f"{n}:{m}" if m else f"keep {meta['k']}/row"
        v = meta["values"]
        inner = describe_record(v["kind"], v["meta"])
        return f"{pat} {inner}"

    def describe(self) -> str:
        return f"{self.pattern or f'keep {self.k}/row'} {self.values.describe()}"
