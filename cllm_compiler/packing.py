"""Bit packing of integer codes (1-8 bits) into bytes, little-endian bit order.

Codes are laid out row-major; element i occupies bits [i*b, (i+1)*b) of the stream.
Work is chunked so that packing a 100M-weight model does not need 8 bytes per weight.
"""
from __future__ import annotations

import numpy as np

_CHUNK = 1 << 21  # elements per chunk (a multiple of 8 keeps chunks byte-aligned); ~20 MB of temporaries


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack(codes: np.ndarray, bits: int) -> bytes:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}")
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return flat.tobytes()
    if flat.size and int(flat.max()) >> bits:
        raise ValueError(f"code {int(flat.max())} does not fit in {bits} bits")
    shifts = np.arange(bits, dtype=np.uint8)
    out = []
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK]
        bitmat = (chunk[:, None] >> shifts) & 1
        out.append(np.packbits(bitmat.reshape(-1), bitorder="little"))
    # Chunks are multiples of 8 elements, so every chunk but the last ends on a byte.
    return b"".join(a.tobytes() for a in out)


def unpack(data: bytes | memoryview, bits: int, n: int) -> np.ndarray:
    if len(data) != packed_nbytes(n, bits):
        raise ValueError(f"packed length {len(data)} != expected {packed_nbytes(n, bits)}")
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw.copy()
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint8)
    out = np.empty(n, dtype=np.uint8)
    step = _CHUNK
    for start in range(0, n, step):
        count = min(step, n - start)
        byte0 = start * bits // 8
        nbytes = packed_nbytes(count, bits)
        bitvec = np.unpackbits(raw[byte0:byte0 + nbytes], bitorder="little")[:count * bits]
        out[start:start + count] = (bitvec.reshape(count, bits) * weights).sum(axis=1, dtype=np.uint8)
    return out
