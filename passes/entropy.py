"""`entropy`: pass every tensor's buffers through byte codecs, keeping the smallest result.

codec=auto tries every applicable codec (rans on integer codes, zstd with float byte
grouping, raw) per buffer and keeps the smallest; naming one codec restricts the choice to
it (and raw, which always applies). Each choice and the sizes tried go to the pass notes.
"""
from __future__ import annotations

import hashlib

from ..codecs import BufferSpec, encode_best
from ..ir import TensorNode
from ..passes_base import Param, Pass, PassStats, TensorStats, register_pass
from ..reprs import Coded, Encoded

CHOICES = {"auto": ("rans", "nm-mask", "zstd"), "rans": ("rans",), "zstd": ("zstd",), "raw": ("raw",),
           "nm-mask": ("nm-mask",)}


@register_pass
class EntropyPass(Pass):
    yields = "encoded"
    name = "entropy"
    help = "entropy-code tensor payloads (auto = smallest of rans / zstd / raw per buffer)"
    params = (Param("codec", str, "auto", "codec to use", choices=tuple(CHOICES)),)
    provides = frozenset({"entropy"})
    default_match = "all"
    lossless = True

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        if isinstance(node.rep, Encoded):
            return
        before = node.rep.storage_bits()
        chosen: list[str] = []

        def choose(buf: str, raw: bytes, spec: BufferSpec | None) -> Coded:
            name, data, params, tried = encode_best(raw, spec or BufferSpec(), CHOICES[self.args["codec"]])
            chosen.append(f"{buf}:{name} ({', '.join(f'{k} {v}' for k, v in tried.items())})")
            return Coded(name, len(raw), data, params, hashlib.sha256(raw).hexdigest())

        kind, (meta, bufs) = node.rep.kind, node.rep.to_record()
        node.rep = None  # type: ignore[assignment]  # drop the unpacked codes before coding: peak memory
        node.rep = Encoded.from_buffers(kind, meta, bufs, node.shape, choose)
        after = node.rep.storage_bits()
        stats.tensors.append(TensorStats(node.name, node.numel, after, node.rep.describe()))
        ent = node.rep.entropy_bits()
        stats.notes.append(f"{node.name}: {before // 8} -> {after // 8} bytes; " + "; ".join(chosen)
                           + (f"; codes entropy {ent:.4f} bits/index" if ent is not None else ""))
