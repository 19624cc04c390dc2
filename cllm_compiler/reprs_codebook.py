"""`Codebook`: weights as indices into learned codebooks (scalar LUTs or d-dim vector codebooks).

w[r, j*d:(j+1)*d] = scale[r, group of j] * sum_s lut[s, l(r)][codes[s, r, j]]

with l(r) = r for per-row codebooks (SqueezeLLM) or 0 for one codebook per tensor, `stages`
additive (residual) codebooks of K = 2^kbits entries each, and optional fp16 scales per group
of `group` input columns (group = 0: no scales). Codes are bit-packed; LUTs are fp16.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import packing
from .reprs import Buffers, Representation, register_rep


@register_rep
class Codebook(Representation):
    kind = "codebook"

    def __init__(self, codes: np.ndarray, luts: np.ndarray, scales: np.ndarray | None, group: int) -> None:
        # codes [stages, rows, cols/d] uint8; luts [stages, nlut, K, d] f16; scales [rows, ngroups] f16
        if codes.ndim != 3 or luts.ndim != 4 or codes.shape[0] != luts.shape[0]:
            raise ValueError("codebook arrays have inconsistent ranks")
        self.codes, self.luts = codes, luts.astype(np.float16)
        self.scales = None if scales is None else scales.astype(np.float16)
        self.group = group
        self.stages, self.nlut, self.K, self.d = luts.shape
        self.kbits = max(1, math.ceil(math.log2(self.K)))
        if self.nlut not in (1, codes.shape[1]):
            raise ValueError(f"{self.nlut} codebooks for {codes.shape[1]} rows")

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[1], self.codes.shape[2] * self.d

    @property
    def nominal_bpw(self) -> float:
        return self.kbits * self.stages / self.d

    def decode_rows(self, start: int, stop: int) -> torch.Tensor:
        rows = min(stop, self.shape[0]) - start
        out = torch.zeros(rows, self.codes.shape[2], self.d)
        for s in range(self.stages):
            lut = torch.from_numpy(self.luts[s].astype(np.float32))  # [nlut, K, d]
            idx = torch.from_numpy(self.codes[s, start:stop].astype(np.int64))  # [rows, n]
            if self.nlut == 1:
                out += lut[0][idx]
            else:  # per-row codebooks
                out += lut[start:stop][torch.arange(rows)[:, None], idx]
        w = out.reshape(rows, -1)
        if self.scales is not None:
            s = torch.from_numpy(self.scales[start:stop].astype(np.float32))
            w = w * s.repeat_interleave(self.group, dim=1)[:, :w.shape[1]]
        return w

    def decode(self) -> torch.Tensor:
        return self.decode_rows(0, self.shape[0])

    def meta(self) -> dict[str, Any]:
        return {"d": self.d, "kbits": self.kbits, "stages": self.stages, "nlut": self.nlut, "group": self.group}

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        meta = self.meta()
        bufs = {"codes": packing.pack(self.codes, self.kbits),
                "lut": np.ascontiguousarray(self.luts, dtype="<f2").tobytes()}
        if self.scales is not None:
            bufs["scales"] = np.ascontiguousarray(self.scales, dtype="<f2").tobytes()
        return meta, bufs

    @classmethod
    def dims(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, int, int, int, int, int, int]:
        rows, cols = shape
        d, kbits, stages, nlut, group = (int(meta[k]) for k in ("d", "kbits", "stages", "nlut", "group"))
        if not (1 <= d <= 16 and cols % d == 0 and 1 <= kbits <= 8 and 1 <= stages <= 8 and nlut in (1, rows)
                and 0 <= group <= cols and (group == 0 or group % d == 0)):
            raise ValueError(f"codebook meta out of range: {meta}")
        ng = -(-cols // group) if group else 0
        return rows, cols, d, kbits, stages, nlut, ng

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "Codebook":
        rows, cols, d, kbits, stages, nlut, ng = cls.dims(meta, shape)
        n = stages * rows * (cols // d)
        codes = packing.unpack(buffers["codes"], kbits, n).reshape(stages, rows, cols // d)
        luts = np.frombuffer(buffers["lut"], dtype="<f2").reshape(stages, nlut, 1 << kbits, d).copy()
        scales = np.frombuffer(buffers["scales"], dtype="<f2").reshape(rows, ng).copy() if ng else None
        return cls(codes, luts, scales, int(meta["group"]))

    @classmethod
    def specs_for(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        from .codecs import BufferSpec
        rows, cols, d, kbits, stages, nlut, ng = cls.dims(meta, shape)
        specs = {"codes": BufferSpec("codes", kbits, stages * rows * (cols // d)),
                 "lut": BufferSpec("float", 16, stages * nlut * (1 << kbits) * d, "f16")}
        if ng:
            specs["scales"] = BufferSpec("float", 16, rows * ng, "f16")
        return specs

    @staticmethod
    def describe_meta(meta: dict[str, Any]) -> str:
        d, k, s = int(meta["d"]), int(meta["kbits"]), int(meta["stages"])
        kind = "lut" if d == 1 else f"vq{d}"
        return f"{kind} {k * s / d:g}b{'' if s == 1 else f' {s}x{k}'}{' row' if int(meta['nlut']) > 1 else ''}" + (
            f" g{meta['group']}" if int(meta["group"]) else "")

    def describe(self) -> str:
        return self.describe_meta(self.meta())

    def grid(self):
        """The codebook as a GPTQ grid (scalar codebooks only)."""
        if self.d != 1 or self.stages != 1:
            return None
        from .passes.codebook import CodebookGrid
        return CodebookGrid(self)
