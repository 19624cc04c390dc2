"""`cast`: store dense tensors as f16, bf16 or f32 (e.g. embeddings left unquantized)."""
from __future__ import annotations

from ..ir import TensorNode
from ..passes_base import Param, Pass, PassStats, register_pass, sqnr_stats
from ..reprs import Dense


@register_pass
class CastPass(Pass):
    yields = "dense"
    name = "cast"
    help = "change the storage dtype of dense tensors"
    params = (Param("dtype", str, "f16", "storage dtype", choices=("f16", "bf16", "f32")),)
    default_match = "embed|lm_head|linear"

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        if not isinstance(node.rep, Dense):
            return
        ref = node.rep.decode()
        node.rep = Dense(node.shape, self.args["dtype"], data=ref.to(_torch_dtype(self.args["dtype"])))
        stats.tensors.append(sqnr_stats(node, ref, node.rep.decode()))


def _torch_dtype(name: str):
    from ..reprs import DTYPES
    return DTYPES[name][0]
