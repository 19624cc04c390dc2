"""Cross-backend equivalence: one compiled IR run by every backend available here, on the same
tokens; pairwise KLD and top-1 agreement, and a verdict against a tolerance.

Backends run the *same* weights: the GGUF is lowered with inexact tensors kept as F32 (not
re-quantized), ONNX only counts as exact when its lowering re-quantized nothing. A backend that
cannot run here is listed with the reason, never silently left out.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from ..errors import CllmError
from ..ir import Model

# llama.cpp and TVM's int8-activation decode differ from fp32 torch by KLD ~0.005 on SmolLM2
# (bench/README.md, issues 5-6); exact-arithmetic backends agree to ~1e-8.
DEFAULT_TOL_KLD = 0.02
DEFAULT_TOL_TOP1 = 0.95
BACKENDS = ("torch", "tvm", "llama.cpp", "onnxruntime", "triton")


@dataclass(frozen=True)
class Tolerance:
    kld_mean: float = DEFAULT_TOL_KLD
    top1: float = DEFAULT_TOL_TOP1


def _runners(folder: Path, model: Model, tmp: Path, seqlen: int, want: tuple[str, ...],
             interpret_triton: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """name -> runner (x [1,T] -> .logits), and name -> {status, reason/notes}."""
    from ..backends import gguf_backend, onnx_backend, triton_backend, tvm_backend
    from ..backends.torch_ref import build_torch_model
    from .latency import TorchRunner
    runners: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}

    def attempt(name: str, why_not: str | None, build: Callable[[], tuple[Any, dict[str, Any]]]) -> None:
        if name not in want:
            info[name] = {"status": "not_run", "reason": "not requested"}
        elif why_not:
            info[name] = {"status": "not_run", "reason": why_not}
        else:
            try:
                runners[name], facts = build()
                info[name] = {"status": "run", **facts}
            except CllmError as e:
                info[name] = {"status": "not_run", "reason": f"lowering/loading failed: {e.format()}"}
    attempt("torch", None, lambda: (TorchRunner(build_torch_model(model)), {"exact": True, "runner": "torch fp32"}))
    attempt("tvm", None if tvm_backend.runs_here(folder) else
            "no TVM package built for this host in the artifact (compile with --target host on this CPU)",
            lambda: (next(iter(tvm_backend.models(folder, seqlen).values())), {"exact": True, "runner": "TVM (fp32 prefill)"}))

    def gguf() -> tuple[Any, dict[str, Any]]:
        from ..backends.gguf_run import LlamaCppModel
        from ..backends.gguf_writer import write_gguf
        w = write_gguf(model, tmp / "exact.gguf", inexact="f32")
        return LlamaCppModel(tmp / "exact.gguf", n_ctx=seqlen), {
            "exact": True, "runner": "llama.cpp", "notes": w.notes[:5],
            "lowering": "GGUF types where exact, F32 for the rest (same weights)"}
    attempt("llama.cpp", None if gguf_backend.runnable() else "llama-cpp-python is not installed", gguf)

    def onnx() -> tuple[Any, dict[str, Any]]:
        low = onnx_backend.lower_artifact(model, tmp)
        return next(iter(onnx_backend.models(tmp, seqlen).values())), {
            "exact": not low["requantized"], "runner": "onnxruntime CPU EP", "notes": low["notes"][:5]}
    attempt("onnxruntime", None if onnx_backend.runnable() else "onnxruntime is not installed", onnx)

    def triton() -> tuple[Any, dict[str, Any]]:
        from ..backends.triton_model import TritonLlama

        class Interpreted(triton_backend.TritonRunner):
            def __init__(self) -> None:
                self.net = TritonLlama(model, "cpu", batch=1, max_len=seqlen, dtype=torch.float32)
        if triton_backend.cuda_available():
            return triton_backend.TritonRunner(model, seqlen), {"exact": True, "runner": "Triton on the GPU"}
        return Interpreted(), {"exact": True, "runner": "Triton interpreter (CPU)"}
    attempt("triton", None if triton_backend.cuda_available() or interpret_triton else
            "no CUDA GPU here (the Triton interpreter is too slow for a whole model; run on a GPU)", triton)
    return runners, info


def compare(folder: Path, model: Model, ids: torch.Tensor, want: tuple[str, ...] = BACKENDS,
            tol: Tolerance = Tolerance(), interpret_triton: bool = False,
            on_step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run every available backend on `ids` and compare all pairs (`model`: folder's model.cllm, read)."""
    from ..validate import compare_logits
    with tempfile.TemporaryDirectory(prefix="cllm-equiv-") as td:
        runners, info = _runners(folder, model, Path(td), max(ids.numel(), 64), want, interpret_triton)
        logits = {}
        for name, r in runners.items():
            on_step(f"cross-backend: {name} on {ids.numel()} tokens")
            logits[name] = r(ids[None]).logits[0].float()
            r.close()
    pairs = []
    for a, b in combinations(logits, 2):
        c = compare_logits(logits[a], logits[b], ids)
        checked = info[a].get("exact", False) and info[b].get("exact", False)
        ok = c["kld_mean"] <= tol.kld_mean and c["top1_agree"] >= tol.top1
        pairs.append({"a": a, "b": b, "kld_mean": c["kld_mean"], "kld_max": c["kld_max"], "top1_agree": c["top1_agree"],
                      "ppl_a": c["ppl_torch"], "ppl_b": c["ppl_device"], "checked": checked, "pass": ok or not checked})
    failed = [p for p in pairs if not p["pass"]]
    return {"tokens": int(ids.numel()), "backends": info, "pairs": pairs,
            "tolerance": {"kld_mean": tol.kld_mean, "top1": tol.top1}, "passed": not failed,  # nothing disagreed
            "checked_pairs": sum(p["checked"] for p in pairs),
            "verdict": ("fail: " + ", ".join(f"{p['a']}~{p['b']} KLD {p['kld_mean']:.2e} top-1 {p['top1_agree']:.3f}"
                                            for p in failed)) if failed else
                       (f"pass: {len(pairs)} pair(s) within KLD <= {tol.kld_mean:g}, top-1 >= {tol.top1:g}"
                        if len(logits) >= 2 else "not checked: fewer than two backends ran")}
