"""`rans`: asymmetric numeral systems on quantization indices, via `constriction`.

The probability model is an order-0 frequency table per buffer (integer counts, stored in
the container header). `FrequencyTable` is public: training (issue 8) uses the same model
for its code-length penalty, so the bits it optimises are the bits on disk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from . import BufferSpec, Codec, register_codec
from .. import packing
from ..errors import CodecError


@dataclass(frozen=True)
class FrequencyTable:
    """Counts of each of 2^bits symbols; the model is p(s) = counts[s] / sum(counts)."""

    counts: tuple[int, ...]

    @classmethod
    def from_symbols(cls, symbols: np.ndarray, bits: int) -> "FrequencyTable":
        flat = symbols.reshape(-1)
        return cls.from_chunks((flat[s:s + _CHUNK] for s in range(0, flat.size, _CHUNK)), bits)

    @classmethod
    def from_chunks(cls, chunks: Iterable[np.ndarray], bits: int) -> "FrequencyTable":
        """Counts over symbol chunks (bincount widens to int64, so never count all at once)."""
        counts = np.zeros(1 << bits, dtype=np.int64)
        for chunk in chunks:
            counts += np.bincount(chunk, minlength=1 << bits)[: 1 << bits]
        return cls(tuple(int(c) for c in counts))

    @property
    def total(self) -> int:
        return sum(self.counts)

    def probabilities(self) -> np.ndarray:
        c = np.asarray(self.counts, dtype=np.float64)
        return c / c.sum()

    def entropy_bits(self) -> float:
        """Empirical order-0 entropy, bits per symbol."""
        t = self.total
        return -sum(c / t * math.log2(c / t) for c in self.counts if c) if t else 0.0

    def code_length_bits(self, symbols: np.ndarray) -> float:
        """Ideal code length of `symbols` under this model (the rate a training penalty uses)."""
        p = self.probabilities()
        with np.errstate(divide="ignore"):
            return float(-np.log2(p[symbols.reshape(-1)]).sum())

    def model(self):
        import constriction
        return constriction.stream.model.Categorical(self.probabilities(), perfect=False)


_CHUNK = 1 << 22  # symbols per constriction call: bounds the int32 temporaries to 16 MB


@register_codec
class RansCodec(Codec):
    name = "rans"

    def applicable(self, spec: BufferSpec) -> bool:
        return spec.kind == "codes" and 1 <= spec.bits <= 8 and spec.count > 0

    def encode(self, data: bytes, spec: BufferSpec) -> tuple[bytes, dict[str, Any]]:
        import constriction
        # Symbols are unpacked chunk by chunk (twice: count, then code) so that a 64M-index
        # tensor never needs its whole unpacked copy; chunks of _CHUNK indices are byte-aligned.
        starts = list(range(0, spec.count, _CHUNK))

        def chunk(s: int) -> np.ndarray:
            n = min(_CHUNK, spec.count - s)
            lo = s * spec.bits // 8
            return packing.unpack(data[lo:lo + packing.packed_nbytes(n, spec.bits)], spec.bits, n)

        table = FrequencyTable.from_chunks((chunk(s) for s in starts), spec.bits)
        model, coder = table.model(), constriction.stream.stack.AnsCoder()
        # A stack coder pushes the last symbol first; encoding chunks last-to-first gives the
        # same stream as one call over all symbols.
        for s in reversed(starts):
            coder.encode_reverse(chunk(s).astype(np.int32), model)
        words = coder.get_compressed().astype("<u4")
        return words.tobytes(), {"freq": list(table.counts)}

    def decode(self, data: bytes, raw_len: int, spec: BufferSpec, params: dict[str, Any]) -> bytes:
        import constriction
        counts = params.get("freq")
        if (not isinstance(counts, list) or len(counts) != 1 << spec.bits
                or not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != spec.count):
            raise CodecError("rans frequency table is malformed or does not match the symbol count")
        if len(data) % 4 or raw_len != packing.packed_nbytes(spec.count, spec.bits):
            raise CodecError("rans payload length is inconsistent")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        out = np.empty(spec.count, dtype=np.uint8)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            model = FrequencyTable(tuple(counts)).model()
            for s in range(0, spec.count, _CHUNK):
                chunk = coder.decode(model, min(_CHUNK, spec.count - s))
                if int(np.max(chunk, initial=0)) >> spec.bits:
                    raise CodecError("rans stream decodes to symbols outside the table")
                out[s:s + chunk.size] = chunk
        except CodecError:
            raise
        except Exception as e:  # constriction raises ValueError/AssertionError on bad streams
            raise CodecError(f"rans stream does not decode: {e}") from e
        if not coder.is_empty():
            raise CodecError("rans stream leaves data over after the last symbol")
        return packing.pack(out, spec.bits)
