"""Triton backend (h100, rtx-4090, any CUDA GPU): lowering, evaluation and speed.

Lowering checks that a kernel reads every matmul weight as stored and compiles each distinct
kernel ahead of time for the target's architecture (no GPU needed), writing `triton/`: a
manifest (per-tensor format, bytes the kernels read, kernel costs) and the cubins. The weights
stay in model.cllm: the GPU layout is a cheap re-pack done when the runtime loads, so the
artifact holds one copy of them. On a machine with a CUDA GPU the evaluator and `cllm-run
--device cuda` run the model in `triton_model.TritonLlama`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import write_bytes
from ..errors import BackendError
from ..ir import Model
from .triton_layout import is_matmul, lower_weight

PACKAGE_DIR = "triton"


def arch_of(target: Any) -> int:
    arch = str(target.extra.get("cuda_arch", "sm_90"))
    try:
        return int(arch.removeprefix("sm_").rstrip("a"))
    except ValueError:
        raise BackendError(f"target {target.name} has cuda_arch {arch!r}", hint="write it as sm_90") from None


def lower_artifact(model: Model, folder: Path, target: Any, progress: Callable[[str], None] | None = None) -> dict:
    from .. import __version__
    from .triton_aot import compile_all
    t0 = time.perf_counter()
    weights, specs = {}, []
    for node in model:
        if is_matmul(node.name) or (node.name == "model.embed_tokens.weight" and model.config.tie_word_embeddings):
            g = lower_weight(node.rep, node.shape, node.name)  # BackendError names the tensor
            specs.append(g.spec)
            weights[node.name] = {"format": g.spec.tag(), "kernel_bytes": g.nbytes()}
    arch = arch_of(target)
    if progress:
        progress(f"compiling Triton kernels for sm_{arch}")
    kernels = compile_all(specs, arch, batches=(1, 2, 4, 8, 16, 64))
    pkg = folder / PACKAGE_DIR
    (pkg / "kernels").mkdir(parents=True, exist_ok=True)
    for k in kernels:
        write_bytes(pkg / "kernels" / f"{k.name}.sm_{arch}.cubin", k.cubin)
    import triton
    manifest = {"backend": "triton", "target": target.name, "arch": f"sm_{arch}", "triton": triton.__version__,
                "cllm": __version__, "weights": weights,
                "kernel_bytes": sum(w["kernel_bytes"] for w in weights.values()),
                "kernels": [k.report() for k in kernels]}
    write_bytes(pkg / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    formats: dict[str, int] = {}
    for w in weights.values():
        formats[w["format"]] = formats.get(w["format"], 0) + 1
    return {"backend": "triton", "file": f"{PACKAGE_DIR}/ ({len(kernels)} sm_{arch} cubins)", "package": PACKAGE_DIR,
            "bytes": manifest["kernel_bytes"], "bits_per_weight": manifest["kernel_bytes"] * 8 / model.num_params,
            "tensor_types": formats, "notes": [], "arch": f"sm_{arch}", "kernels": len(kernels),
            "kernel_bytes": manifest["kernel_bytes"], "seconds": round(time.perf_counter() - t0, 2),
            "runtime": ("Triton kernels on this GPU" if cuda_available() else
                        "no CUDA GPU here: kernels compiled ahead of time, not run (cllm-run --device cuda on a GPU)")}


def cuda_available() -> bool:
    return torch.cuda.is_available()


class TritonRunner:
    """The evaluator's model interface (logits of whole windows) over a TritonLlama on the GPU."""

    def __init__(self, model: Model, seqlen: int, batch: int = 1) -> None:
        from .triton_model import TritonLlama
        self.net = TritonLlama(model, "cuda", batch=batch, max_len=seqlen)

    def __call__(self, x: torch.Tensor) -> Any:
        from types import SimpleNamespace
        return SimpleNamespace(logits=self.net.prefill(x, last_only=False).float().cpu())

    def speed(self, prompt: list[int], new_tokens: int = 64) -> dict[str, float]:
        """The runners' interface for cllm-validate: one timed prefill + CUDA-graph decode run."""
        from .triton_run import decode_speed
        r = decode_speed(self.net, prompt, new_tokens, repeats=1)
        return {"prefill_tok_s": r["prefill_tok_s"], "decode_tok_s": r["decode_tok_s"]}

    def close(self) -> None:
        del self.net
        torch.cuda.empty_cache()


def models(folder: Path, seqlen: int) -> dict[str, Any]:
    """The Triton runtime as an evaluator model when this machine has a CUDA GPU."""
    if not cuda_available():
        return {}
    from ..container import read_container
    return {"triton": TritonRunner(read_container(folder / "model.cllm"), seqlen)}


def speed(model: Any, ids: torch.Tensor, prompt: int = 256, new_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    from .triton_run import decode_speed
    return decode_speed(model.net, ids[0, :prompt].tolist(), new_tokens, repeats)
