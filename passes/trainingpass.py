"""What the training passes (`reconstruct`, `distill`) share: text windows with held-out
sequences checked when the pipeline is read, the text checked once the model is loaded, and no
work when the allocator simulates one tensor (training keeps codes and sizes)."""
from __future__ import annotations

import torch

from ..errors import PassError
from ..ir import Model
from ..passes_base import Pass, PassStats
from ..reprs import DTYPES, Dense
from .calibrate import prepared_windows


class TrainingPass(Pass):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        a = self.args  # checked when the pipeline is read, before any work
        if -(-a["tokens"] // a["seqlen"]) <= a["holdout"]:
            raise PassError(f"{self.name}: {a['tokens']} tokens make no more than holdout={a['holdout']} sequences "
                            f"of {a['seqlen']}", hint="raise tokens= or lower seqlen= / holdout=")

    def apply(self, node: object, stats: PassStats) -> None:
        """One tensor alone (the allocator simulating a candidate): nothing to train. Training
        keeps the codes and the file size and only lowers the error, so a candidate is judged on
        the error it has without it."""

    def prepare(self, model: Model) -> None:
        prepared_windows(self, model)


def stored_norm(model: Model, name: str, w: torch.Tensor) -> Dense:
    """A trained norm weight rounded to the dtype its tensor is stored in (what the artifact holds)."""
    dtype = model.tensors[name].rep.dtype  # type: ignore[attr-defined]
    return Dense(tuple(w.shape), dtype, data=w.detach().to(DTYPES[dtype][0]).clone())
