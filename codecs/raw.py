"""`raw`: bytes stored as they are, for payloads no codec shrinks."""
from __future__ import annotations

from typing import Any

from . import BufferSpec, Codec, register_codec
from ..errors import CodecError


@register_codec
class RawCodec(Codec):
    name = "raw"

    def encode(self, data: bytes, spec: BufferSpec) -> tuple[bytes, dict[str, Any]]:
        return bytes(data), {}

    def decode(self, data: bytes, raw_len: int, spec: BufferSpec, params: dict[str, Any]) -> bytes:
        if len(data) != raw_len:
            raise CodecError(f"raw payload is {len(data)} bytes, expected {raw_len}")
        return bytes(data)
