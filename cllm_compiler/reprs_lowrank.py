"""`LowRank`: W = base + U V, with U [out, r] and V [r, in] stored as f16 or f32.

base is any other representation (a quantized tensor whose residual U V corrects, as
LQER/QERA) or absent (a plain truncated factorization, as ASVD/SVD-LLM).
"""
from __future__ import annotations

from typing import Any

import torch

from .reprs import (DTYPES, Buffers, REPRESENTATIONS, Representation, describe_record, register_rep,
                    rep_from_record, specs_of)


@register_rep
class LowRank(Representation):
    kind = "lowrank"

    def __init__(self, u: torch.Tensor, v: torch.Tensor, base: Representation | None, dtype: str = "f16") -> None:
        if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[0]:
            raise ValueError("low-rank factors do not chain")
        self.dtype = dtype
        self.u, self.v = u.to(DTYPES[dtype][0]), v.to(DTYPES[dtype][0])
        self.base = base

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def decode(self) -> torch.Tensor:
        w = self.u.float() @ self.v.float()
        return w + self.base.decode() if self.base is not None else w

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        meta: dict[str, Any] = {"rank": self.rank, "dtype": self.dtype, "base": None}
        bufs = {"U": self.u.contiguous().view(torch.uint8).numpy().tobytes(),
                "V": self.v.contiguous().view(torch.uint8).numpy().tobytes()}
        if self.base is not None:
            bmeta, bbufs = self.base.to_record()
            meta["base"] = {"kind": self.base.kind, "meta": bmeta}
            bufs |= {f"base.{k}": b for k, b in bbufs.items()}
        return meta, bufs

    @classmethod
    def _check(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, str]:
        r, dt = int(meta["rank"]), meta["dtype"]
        if not (1 <= r <= min(shape)) or dt not in ("f16", "f32"):
            raise ValueError(f"rank {r} / dtype {dt!r} out of range")
        b = meta["base"]
        if b is not None and (b["kind"] not in REPRESENTATIONS or b["kind"] in ("lowrank", "encoded")):
            raise ValueError(f"a low-rank base cannot be '{b['kind']}'")
        return r, dt

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "LowRank":
        r, dt = cls._check(meta, shape)
        torch_dt = DTYPES[dt][0]
        u = torch.frombuffer(bytearray(buffers["U"]), dtype=torch.uint8).view(torch_dt).reshape(shape[0], r)
        v = torch.frombuffer(bytearray(buffers["V"]), dtype=torch.uint8).view(torch_dt).reshape(r, shape[1])
        base = None
        if meta["base"] is not None:
            bb = {k[len("base."):]: b for k, b in buffers.items() if k.startswith("base.")}
            base = rep_from_record(meta["base"]["kind"], meta["base"]["meta"], bb, shape)
        return cls(u, v, base, dt)

    @classmethod
    def specs_for(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        from .codecs import BufferSpec
        r, dt = cls._check(meta, shape)
        bits = DTYPES[dt][1]
        specs = {"U": BufferSpec("float", bits, shape[0] * r, dt), "V": BufferSpec("float", bits, r * shape[1], dt)}
        if meta["base"] is not None:
            inner = specs_of(meta["base"]["kind"], meta["base"]["meta"], shape)
            specs |= {f"base.{k}": s for k, s in inner.items()}
        return specs

    @staticmethod
    def describe_meta(meta: dict[str, Any]) -> str:
        b = meta["base"]
        if b is None:
            return f"lowrank r{meta['rank']}"
        inner = describe_record(b["kind"], b["meta"])
        return f"{inner} + r{meta['rank']}"

    def describe(self) -> str:
        return (f"{self.base.describe()} + r{self.rank}" if self.base is not None else f"lowrank r{self.rank}")
