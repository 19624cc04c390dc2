"""`nm-mask`: N:M sparsity masks coded as pattern indices, then rANS.

A 2:4 group has C(4,2) = 6 possible patterns, so a mask costs at most log2(6) = 2.585 bits
per 4 weights instead of 4, and less when some patterns are more common (the order-0
frequency table of pattern indices is stored like `rans`'s). Buffers are masks bit-packed
one bit per weight (1 = kept); the spec's dtype says "N:M".
"""
from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations
from typing import Any

import numpy as np

from . import BufferSpec, Codec, register_codec
from .. import packing
from ..errors import CodecError
from .rans import RansCodec


@lru_cache(maxsize=None)
def patterns(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(pattern index -> m-bit pattern, m-bit pattern -> index or -1), lexicographic order."""
    pats = np.array([sum(1 << j for j in c) for c in combinations(range(m), n)], dtype=np.int64)
    lut = np.full(1 << m, -1, dtype=np.int64)
    lut[pats] = np.arange(pats.size)
    return pats, lut


def parse_nm(dtype: str) -> tuple[int, int]:
    try:
        n, m = (int(x) for x in dtype.split(":"))
    except ValueError:
        raise CodecError(f"nm-mask needs an 'N:M' dtype, got {dtype!r}") from None
    if not 0 < n < m <= 8:
        raise CodecError(f"N:M = {n}:{m} is outside 0 < N < M <= 8")
    return n, m


def index_bits(n: int, m: int) -> int:
    return max(1, math.ceil(math.log2(math.comb(m, n))))


@register_codec
class NMMaskCodec(Codec):
    name = "nm-mask"

    def applicable(self, spec: BufferSpec) -> bool:
        return spec.kind == "mask" and ":" in spec.dtype and spec.count > 0

    def encode(self, data: bytes, spec: BufferSpec) -> tuple[bytes, dict[str, Any]]:
        n, m = parse_nm(spec.dtype)
        if spec.count % m:
            raise CodecError(f"mask of {spec.count} weights is not a whole number of {m}-groups")
        bits = packing.unpack(data, 1, spec.count).reshape(-1, m).astype(np.int64)
        keys = (bits << np.arange(m)).sum(axis=1)
        idx = patterns(n, m)[1][keys]
        if (idx < 0).any():
            raise CodecError(f"mask is not {n}:{m} (group {int(np.argmax(idx < 0))} keeps a different count)")
        b = index_bits(n, m)
        payload, params = RansCodec().encode(packing.pack(idx.astype(np.uint8), b), BufferSpec("codes", b, idx.size))
        return payload, {"n": n, "m": m, **params}

    def decode(self, data: bytes, raw_len: int, spec: BufferSpec, params: dict[str, Any]) -> bytes:
        n, m = parse_nm(spec.dtype)
        if params.get("n") != n or params.get("m") != m or spec.count % m:
            raise CodecError("nm-mask parameters disagree with the buffer")
        groups, b = spec.count // m, index_bits(n, m)
        packed = RansCodec().decode(data, packing.packed_nbytes(groups, b), BufferSpec("codes", b, groups), params)
        idx = packing.unpack(packed, b, groups).astype(np.int64)
        pats = patterns(n, m)[0]
        if (idx >= pats.size).any():
            raise CodecError("nm-mask stream holds a pattern index out of range")
        bits = ((pats[idx][:, None] >> np.arange(m)) & 1).astype(np.uint8).reshape(-1)
        out = packing.pack(bits, 1)
        if len(out) != raw_len:
            raise CodecError(f"nm-mask decoded to {len(out)} bytes, expected {raw_len}")
        return out
