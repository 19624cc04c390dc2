"""`entropy`: pass every tensor's buffers through a byte codec, keeping the smaller result.

With codec=zstd a buffer that zstd does not shrink is stored raw, and the choice is
recorded per tensor in the pass notes. Issue 3 adds rANS on the codes themselves.
"""
from __future__ import annotations

from ..codecs import get_codec
from ..ir import Model
from ..passes_base import Param, Pass, PassStats, TensorStats, register_pass
from ..reprs import Encoded


@register_pass
class EntropyPass(Pass):
    name = "entropy"
    help = "entropy-code tensor payloads (zstd for now; smaller of codec and raw per buffer)"
    params = (
        Param("codec", str, "zstd", "byte codec", choices=("zstd", "raw")),
        Param("level", int, 9, "zstd level (1-22); 19 gains ~1% on 4-bit codes at ~5x the time",
              check=lambda v: 1 <= v <= 22),
    )
    provides = frozenset({"entropy"})
    default_match = "all"

    def run(self, model: Model) -> PassStats:
        stats = PassStats(self.spec())
        codec = get_codec(self.args["codec"])
        for node in self.each(model):
            if isinstance(node.rep, Encoded):
                continue
            before = node.rep.storage_bits()
            chosen: list[str] = []

            def choose(buf: str, raw: bytes) -> tuple[str, bytes]:
                enc = codec.encode(raw, self.args["level"]) if codec.name == "zstd" else codec.encode(raw)
                pick = (codec.name, enc) if len(enc) < len(raw) else ("raw", raw)
                chosen.append(f"{buf}:{pick[0]}")
                return pick

            node.rep = Encoded.wrap(node.rep, node.shape, choose)
            after = node.rep.storage_bits()
            stats.tensors.append(TensorStats(node.name, node.numel, after, node.rep.describe()))
            stats.notes.append(f"{node.name}: {' '.join(chosen)} {before // 8} -> {after // 8} bytes")
        return stats
