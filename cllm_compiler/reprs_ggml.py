"""`GGMLBlocks`: a tensor held in one of llama.cpp's block formats (K-quants, i-quants, Q4_0...).

The bytes are exactly what a GGUF file stores for the tensor (rows in HF order), so the GGUF
backend copies them unchanged and the rate is the GGUF rate. Decoding uses gguf-py's reference
dequantizer, which needs no llama.cpp.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .reprs import Buffers, Representation, register_rep


def _sizes(qtype: str, cols: int) -> tuple[int, int]:
    import gguf
    try:
        blk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    except KeyError:
        raise ValueError(f"unknown GGML type {qtype!r}") from None
    if blk == 1 or cols % blk:
        raise ValueError(f"{cols} columns are not whole {qtype} blocks of {blk}")
    return blk, cols // blk * size


@register_rep
class GGMLBlocks(Representation):
    kind = "ggml"

    def __init__(self, qtype: str, blocks: np.ndarray, shape: tuple[int, ...]) -> None:
        rows, cols = shape
        _, rb = _sizes(qtype, cols)
        if blocks.dtype != np.uint8 or blocks.shape != (rows, rb):
            raise ValueError(f"{qtype} blocks for {shape} must be uint8 [{rows}, {rb}], got {blocks.shape}")
        self.qtype, self.blocks, self.shape = qtype, blocks, tuple(shape)

    def decode(self) -> torch.Tensor:
        import gguf.quants
        out = gguf.quants.dequantize(self.blocks, gguf.GGMLQuantizationType[self.qtype])
        return torch.from_numpy(np.array(out, dtype=np.float32).reshape(self.shape))

    def storage_bits(self) -> int:
        return 8 * self.blocks.nbytes

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        return {"type": self.qtype}, {"blocks": self.blocks.tobytes()}

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "GGMLBlocks":
        if len(shape) != 2:
            raise ValueError("GGML block tensors are 2-D")
        _, rb = _sizes(str(meta["type"]), shape[1])
        raw = np.frombuffer(buffers["blocks"], dtype=np.uint8)
        if raw.size != shape[0] * rb:
            raise ValueError(f"{raw.size} block bytes, expected {shape[0] * rb}")
        return cls(str(meta["type"]), raw.reshape(shape[0], rb).copy(), shape)

    @classmethod
    def specs_for(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        from .codecs import BufferSpec
        _, rb = _sizes(str(meta["type"]), shape[1])
        return {"blocks": BufferSpec("bytes", 8, shape[0] * rb)}

    @staticmethod
    def describe_meta(meta: dict[str, Any]) -> str:
        return f"ggml {meta['type']}"

    def describe(self) -> str:
        return f"ggml {self.qtype}"
