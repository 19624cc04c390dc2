"""`raw`: bytes stored as they are, for payloads no codec shrinks."""
from __future__ import annotations

from . import Codec, register_codec
from ..errors import CodecError


@register_codec
class RawCodec(Codec):
    name = "raw"

    def encode(self, data: bytes) -> bytes:
        return bytes(data)

    def decode(self, data: bytes, raw_len: int) -> bytes:
        if len(data) != raw_len:
            raise CodecError(f"raw payload is {len(data)} bytes, expected {raw_len}")
        return bytes(data)
