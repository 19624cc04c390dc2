"""The `gguf` backend: lower a compiled artifact to model.gguf and validate it in llama.cpp.

Lowering reads the .cllm back (so `cllm-decode ART --to gguf` gives the same bytes) and writes
the GGUF atomically. Validation runs llama.cpp on the same WikiText windows as the torch
evaluator: PPL, KLD against the uncompressed model, KLD/top-1 against the torch run of the
same weights (the cross-backend check), prefill/decode tokens/s and memory.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_path
from ..ir import Model
from .gguf_writer import write_gguf

GGUF_FILE = "model.gguf"


def lower_artifact(model: Model, folder: Path, target: Any = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write folder/model.gguf from `model` (read back from the .cllm); return the lowering facts.
    (`target`: the backend interface's; every GGUF target gets the same file.)"""
    path = folder / GGUF_FILE
    with atomic_path(path) as tmp:
        written = write_gguf(model, tmp, progress=progress)
    size = path.stat().st_size
    return {"backend": "gguf", "file": GGUF_FILE, "bytes": size, "bits_per_weight": size * 8 / model.num_params,
            "tensor_types": written.tensor_types, "notes": written.notes,
            "runtime": "llama.cpp via llama-cpp-python" if runnable() else
                       "llama-cpp-python not installed: the GGUF was written but not run here"}


def runnable() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def gguf_models(folder: Path, seqlen: int) -> dict[str, Any]:
    """The GGUF as an evaluator model, when llama.cpp is available."""
    if not runnable() or not (folder / GGUF_FILE).is_file():
        return {}
    from .gguf_run import LlamaCppModel
    return {"llama.cpp": LlamaCppModel(folder / GGUF_FILE, n_ctx=seqlen)}


models = gguf_models


def speed(model: Any, ids: torch.Tensor, prompt: int = 256, new_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Median prefill/decode tokens/s of a LlamaCppModel on this host (measured, not estimated)."""
    from ..evaluate import runner_speed
    new_tokens = min(new_tokens, model.n_ctx // 4)
    return runner_speed(model, ids, prompt, new_tokens, repeats, int(os.environ.get("CLLM_THREADS", "1")),
                        "measured: llama.cpp on this host's CPU")
