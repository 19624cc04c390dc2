"""Walk a GGUF header with every count checked against the file, before gguf-py reads it.

gguf-py trusts the counts it reads: a 118-byte file whose array claims 10^7 elements sent its
reader into a Python loop that allocated 7.4 GB. Here each count is bounded by the bytes left
(an element takes at least one byte; a string at least eight), nesting is limited, and every
tensor must be a known type whose bytes lie inside the data section without overlapping
another's. Only a header that passes is handed to gguf-py.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path

from .errors import LoadError
from .safeio import regular_file

_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
STRING, ARRAY = 8, 9
MAX_STRING = 1 << 26   # a chat template or a merges entry; nothing legitimate comes near 64 MiB
MAX_DIMS = 4
HINT = "the file is not a GGUF model cllm can read (corrupt, truncated or crafted)"


class _Walker:
    def __init__(self, buf: mmap.mmap, name: str) -> None:
        self.buf, self.pos, self.name = buf, 0, name

    def fail(self, what: str) -> LoadError:
        return LoadError(f"{self.name}: {what}", offset=self.pos, hint=HINT)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"needs {n} bytes but the file ends after {len(self.buf) - self.pos}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def count(self, n: int, least: int, what: str) -> int:
        """`n` items of at least `least` bytes each must fit in what is left of the file."""
        if n * least > len(self.buf) - self.pos:
            raise self.fail(f"{what} claims {n} items, more than the {len(self.buf) - self.pos} bytes left can hold")
        return n

    def string(self, what: str) -> str:
        n = self.u64()
        if n > MAX_STRING:
            raise self.fail(f"{what} claims a string of {n} bytes")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8 text") from None

    def value(self, vtype: int, key: str, depth: int = 0) -> int | None:
        """Skip one value; returns it when it is a small integer (general.alignment needs it)."""
        if vtype in _FIXED:
            raw = self.take(_FIXED[vtype])
            return int.from_bytes(raw, "little") if vtype in (4, 10) else None
        if vtype == STRING:
            self.string(f"key '{key}'")
            return None
        if vtype == ARRAY:
            if depth >= 2:
                raise self.fail(f"key '{key}' nests arrays more than two deep")
            etype = self.u32()
            n = self.u64()
            if etype in _FIXED:
                self.take(self.count(n, _FIXED[etype], f"key '{key}'") * _FIXED[etype])
            elif etype in (STRING, ARRAY):
                for _ in range(self.count(n, 8 if etype == STRING else 12, f"key '{key}'")):
                    self.value(etype, key, depth + 1)
            else:
                raise self.fail(f"key '{key}' is an array of unknown type {etype}")
            return None
        raise self.fail(f"key '{key}' has unknown value type {vtype}")


def check_gguf(path: Path) -> None:
    """LoadError naming the offset unless the header of the GGUF at `path` is self-consistent."""
    regular_file(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise LoadError(f"{path.name} is too short to be a GGUF file", hint=HINT)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # only the header's pages are read
            _check(_Walker(data, path.name), path.name)


def _check(w: _Walker, file: str) -> None:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    if w.take(4) != b"GGUF":
        raise w.fail("does not start with the GGUF magic")
    version = w.u32()
    if version not in (2, 3):
        raise w.fail(f"GGUF version {version} is not one cllm reads (2 or 3)")
    n_tensors, n_kv = w.u64(), w.u64()
    w.count(n_kv, 13, "the key-value count")  # key length (8) + one byte + type (4)
    alignment, keys = 32, set()
    for _ in range(n_kv):
        key = w.string("a key")
        if key in keys:
            raise w.fail(f"key '{key[:80]}' appears twice")
        keys.add(key)
        v = w.value(w.u32(), key[:80])
        if key == "general.alignment":
            if v is None or v == 0 or v & (v - 1) or v > 1 << 16:
                raise w.fail("general.alignment is not a power of two up to 65536")
            alignment = v
    w.count(n_tensors, 8 + 4 + 8 + 4 + 8, "the tensor count")
    infos, names = [], set()
    for _ in range(n_tensors):
        name = w.string("a tensor name")
        if name in names:
            raise w.fail(f"tensor '{name[:80]}' appears twice")
        names.add(name)
        nd = w.u32()
        if not 1 <= nd <= MAX_DIMS:
            raise w.fail(f"tensor '{name[:80]}' has {nd} dimensions")
        dims = [w.u64() for _ in range(nd)]
        qtype, offset = w.u32(), w.u64()
        infos.append((name, dims, qtype, offset))
    start = -(-w.pos // alignment) * alignment
    spans = []
    for name, dims, qtype, offset in infos:
        if qtype not in GGML_QUANT_SIZES or qtype not in set(GGMLQuantizationType):
            raise LoadError(f"{file}: unknown tensor type {qtype}", tensor=name, hint=HINT)
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        if any(d == 0 for d in dims) or dims[0] % block or math.prod(dims) > 1 << 40:
            raise LoadError(f"{file}: shape {dims} is empty, too large or not whole {block}-element blocks",
                            tensor=name, hint=HINT)
        nbytes = math.prod(dims) // block * size
        if offset % alignment or start + offset + nbytes > len(w.buf):
            raise LoadError(f"{file}: the tensor's {nbytes} bytes at data offset {offset} lie outside the file "
                            "or off its alignment", tensor=name, hint=HINT)
        spans.append((offset, offset + nbytes, name))
    spans.sort()
    for (_, end0, n0), (a1, _, n1) in zip(spans, spans[1:]):
        if a1 < end0:
            raise LoadError(f"{file}: the bytes of '{n0}' and '{n1}' overlap", tensor=n1, hint=HINT)
