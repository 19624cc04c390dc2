"""`zstd`: Zstandard on packed codes and scales.

Single-threaded on purpose: zstd's multi-threaded mode may split frames differently, and
artifacts must be byte-for-byte deterministic. Level 19 costs ~5x the time of level 9 for
about 1% on packed 4-bit codes, so the default is 9 (a parameter of the entropy pass).
"""
from __future__ import annotations

import zstandard

from . import Codec, register_codec
from ..errors import CodecError

DEFAULT_LEVEL = 9


@register_codec
class ZstdCodec(Codec):
    name = "zstd"

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        self.level = level

    def encode(self, data: bytes, level: int | None = None) -> bytes:
        cctx = zstandard.ZstdCompressor(level=level or self.level, threads=0,
                                        write_content_size=True, write_checksum=False)
        return cctx.compress(data)

    def decode(self, data: bytes, raw_len: int) -> bytes:
        try:
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise CodecError(f"zstd frame does not decode: {e}") from e
        if len(out) != raw_len:
            raise CodecError(f"zstd frame decoded to {len(out)} bytes, expected {raw_len}")
        return out
