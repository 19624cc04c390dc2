"""Byte codecs for tensor payloads, registered by name (`cllm_compiler.codecs`).

A codec turns one buffer of a representation into bytes and back. It is told what the
buffer holds (`BufferSpec`: packed integer codes, floats, or opaque bytes), may return
small parameters that go into the container header (e.g. a frequency table), and on
decode is told the decoded length so a damaged payload cannot make it allocate without bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import CodecError

CODECS: dict[str, "Codec"] = {}


@dataclass(frozen=True)
class BufferSpec:
    """What a buffer holds: 'codes' (count symbols of `bits` bits, bit-packed), 'float', 'mask'
    (count bits, one per weight; dtype "N:M" when structured) or 'bytes'."""

    kind: str = "bytes"
    bits: int = 8
    count: int = 0
    dtype: str = ""


class Codec:
    name: ClassVar[str] = ""

    def applicable(self, spec: BufferSpec) -> bool:
        return True

    def encode(self, data: bytes, spec: BufferSpec) -> tuple[bytes, dict[str, Any]]:
        raise NotImplementedError

    def decode(self, data: bytes, raw_len: int, spec: BufferSpec, params: dict[str, Any]) -> bytes:
        raise NotImplementedError


def register_codec(cls: type[Codec]) -> type[Codec]:
    if cls.name in CODECS:
        raise CodecError(f"codec '{cls.name}' registered twice")
    CODECS[cls.name] = cls()
    return cls


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise CodecError(f"unknown codec '{name}'", hint=f"known codecs: {', '.join(sorted(CODECS))}") from None


def encode_best(data: bytes, spec: BufferSpec, names: tuple[str, ...]) -> tuple[str, bytes, dict[str, Any], dict[str, int]]:
    """Encode with each applicable codec in `names` (plus raw); keep the smallest.

    Returns (codec, payload, params, sizes tried) so the choice can be reported.
    """
    tried: dict[str, int] = {}
    best: tuple[str, bytes, dict[str, Any]] | None = None
    for name in dict.fromkeys((*names, "raw")):
        codec = get_codec(name)
        if not codec.applicable(spec):
            continue
        try:
            payload, params = codec.encode(data, spec)
        except CodecError:  # e.g. a mask that is not N:M: this codec does not apply to this data
            continue
        tried[name] = len(payload)
        if best is None or len(payload) < len(best[1]):
            best = (name, payload, params)
    assert best is not None  # raw always applies
    return (*best, tried)


from . import nm_mask, rans, raw, zstd  # noqa: E402,F401  (registers the built-in codecs)
