"""`ggml`: quantize tensors to llama.cpp's own block types (K-quants, i-quants, Q4_0..Q8_0)
with ggml's encoder, importance-weighted by cllm's calibration statistics.

This is how a GGUF compile gets K-quants bit-exactly: the block bytes are produced here, stored
in the .cllm as they are, and copied into the GGUF unchanged. The importance vector per input
channel is the calibration's mean x^2 (what llama.cpp's imatrix tool records). A row that is
not a whole number of the type's blocks (e.g. 576 columns for 256-blocks) falls back to the
type llama.cpp itself would use, and the fallback is reported per tensor.
"""
from __future__ import annotations

import numpy as np
import torch

from ..backends import ggml_lib
from ..errors import BackendError, PassError
from ..ir import TensorNode
from ..passes_base import Param, Pass, PassStats, measure, register_pass
from ..reprs_ggml import GGMLBlocks


@register_pass
class GGMLPass(Pass):
    yields = "ggml"
    name = "ggml"
    help = "llama.cpp block quantization (Q2_K..Q6_K, IQ2..IQ4, Q4_0..Q8_0) by ggml, calibration-weighted"
    params = (
        Param("type", str, "Q4_K", "GGML block type", choices=ggml_lib.BLOCK_TYPES),
        Param("fallback", str, "llama", "rows that are not whole blocks: 'llama' = llama.cpp's substitute "
              "type (Q2_K/Q3_K->Q4_0, Q4_K->Q5_0, Q6_K->Q8_0, ...), 'error' = refuse", choices=("llama", "error")),
        Param("imatrix", bool, True, "weight the rounding by calibration input energy (llama.cpp imatrix)"),
    )
    provides = frozenset({"quantized"})
    default_match = "linear|embed|lm_head"

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        if len(node.shape) != 2:
            raise PassError(f"cannot block-quantize a {len(node.shape)}-D tensor", tensor=node.name,
                            hint="add it to skip= or narrow match=")
        a = self.args_for(node)
        qtype = self._type_for(node, a, stats)
        before = node.rep
        w = before.decode()
        imatrix = self._imatrix(node, a)
        if imatrix is None and ggml_lib.requires_imatrix(qtype):
            raise PassError(f"{qtype} needs an importance matrix and this tensor has no calibration statistics",
                            tensor=node.name, hint="put calibrate before ggml, or choose a K-quant type")
        try:
            blocks = ggml_lib.quantize(w.numpy(), qtype, imatrix)
        except BackendError as e:
            raise PassError(e.message, tensor=node.name, hint=e.hint) from None
        node.rep = GGMLBlocks(qtype, blocks, node.shape)
        if before.kind != "dense" and not self.ctx.simulating:
            extra = float((node.rep.decode() - w).pow(2).mean())
            stats.notes.append(f"{node.name}: {before.describe()} re-quantized to {qtype}: "
                               f"extra weight MSE {extra:.3e} (vs the {before.describe()} tensor)")
        stats.tensors.append(measure(node, self.ctx.original(node), self.ctx))

    def _type_for(self, node: TensorNode, a: dict, stats: PassStats) -> str:
        qtype, cols = a["type"], node.shape[1]
        if ggml_lib.fits(qtype, cols):
            return qtype
        sub = ggml_lib.FALLBACK.get(qtype)
        if a["fallback"] == "error" or sub is None or not ggml_lib.fits(sub, cols):
            raise PassError(f"{cols} columns are not whole {qtype} blocks of {ggml_lib.block_shape(qtype)[0]}",
                            tensor=node.name, hint="use fallback=llama, or a 32-block type (Q4_0, Q5_0, Q8_0, IQ4_NL)")
        if not self.ctx.simulating:
            stats.notes.append(f"{node.name}: {cols} columns are not whole {qtype} blocks: {sub} instead")
        return sub

    def _imatrix(self, node: TensorNode, a: dict) -> np.ndarray | None:
        cal = self.ctx.calib
        if not a["imatrix"] or cal is None or not cal.has(node.name):
            return None
        return cal.input_mean_sq(node.name).to(torch.float32).numpy()
