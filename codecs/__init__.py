"""Byte codecs for tensor payloads, registered by name (`cllm_compiler.codecs`).

A codec turns a buffer into bytes and back; `decode` is told the decoded length so that a
damaged payload cannot make it allocate without bound. Issue 3 adds rANS and N:M masks.
"""
from __future__ import annotations

from typing import ClassVar

from ..errors import CodecError

CODECS: dict[str, "Codec"] = {}


class Codec:
    name: ClassVar[str] = ""

    def encode(self, data: bytes) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes, raw_len: int) -> bytes:
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


from . import raw, zstd  # noqa: E402,F401  (registers the built-in codecs)
