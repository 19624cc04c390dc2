"""Validate an artifact on this machine: cross-backend equivalence, latency distributions of its
backend next to llama.cpp on the same IR, a batch sweep, memory and energy, each value tagged."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..energy import default_readers, estimate, measure
from ..ir import Model
from ..measure import kv_cache_bytes, machine_facts, measured, not_measured, weight_stream_bytes
from ..targets import Target
from .equivalence import BACKENDS, Tolerance, compare
from .latency import TorchRunner, batch_sweep, ratios, time_runners

PEER = "llama.cpp (same IR)"


@dataclass(frozen=True)
class ValidateOptions:
    tokens: int = 256  # WikiText-2 tokens for the cross-backend check
    prompt: int = 64
    new_tokens: int = 16
    repeats: int = 20
    batches: tuple[int, ...] = (1, 2, 4)
    backends: tuple[str, ...] = BACKENDS
    peer: bool = True
    tol: Tolerance = field(default_factory=Tolerance)
    interpret_triton: bool = False


def not_run_here(folder: Path, target: Target) -> str:
    """Why the artifact's TVM package is not run on this machine (it would die there, or it is
    for another machine altogether)."""
    import platform

    from ..backends.tvm_backend import PACKAGE_DIR, host_missing_isa
    from ..errors import CllmError
    from ..safeio import read_json
    try:
        man = read_json(folder / PACKAGE_DIR / "tvm.json", inside=folder)
    except CllmError:
        return f"no readable TVM package in {folder / PACKAGE_DIR}"
    lacks = host_missing_isa(man) if man.get("tvm_target", {}).get("kind") == "llvm" else []
    if lacks and man.get("built_on") == platform.machine():
        return (f"not run here: the package is built for {target.name}, whose code needs CPU flags this host "
                f"lacks ({', '.join(lacks)}); running it would stop with an illegal instruction. Run it on "
                "such a CPU (cllm-validate ART --device NAME), or compile with --target host")
    return f"the TVM package is built for {target.name}, not this host: run it there (cllm-validate ART --device NAME)"


def primary_runner(folder: Path, model: Model, target: Target, n_ctx: int) -> tuple[str, Any | None, str]:
    """(name, runner or None, why not) for the artifact's own backend on this machine."""
    from ..backends import gguf_backend, onnx_backend, tvm_backend
    if target.backend == "tvm":
        if tvm_backend.runs_here(folder):
            from ..backends.tvm_run import TvmModel
            return "tvm", TvmModel(folder / tvm_backend.PACKAGE_DIR), ""
        return "tvm", None, not_run_here(folder, target)
    if target.backend == "gguf" and (folder / gguf_backend.GGUF_FILE).is_file() and gguf_backend.runnable():
        from ..backends.gguf_run import LlamaCppModel
        return "llama.cpp", LlamaCppModel(folder / gguf_backend.GGUF_FILE, n_ctx=n_ctx, logits_all=False, kv_type="f16"), ""
    if target.backend == "onnx" and (ort := onnx_backend.models(folder, n_ctx)):
        return "onnxruntime", ort["onnxruntime"], ""
    if target.backend == "triton":
        from ..backends.triton_backend import TritonRunner, cuda_available
        if cuda_available():
            return "triton", TritonRunner(model, n_ctx), ""
        return "triton", None, "no CUDA GPU here: the Triton backend's latency and energy are measured on one"
    from ..backends.torch_ref import build_torch_model
    return "torch", TorchRunner(build_torch_model(model)), ""


def _peer(model: Model, tmp: Path, n_ctx: int, facts: dict[str, Any]) -> Any | None:
    """llama.cpp on the same IR, each tensor as its exact GGUF type or llama.cpp's nearest one."""
    from ..backends import gguf_backend
    if not gguf_backend.runnable():
        return None
    from ..backends.gguf_run import LlamaCppModel
    from ..backends.gguf_writer import write_gguf
    w = write_gguf(model, tmp / "peer.gguf", inexact="requant")
    facts.update({"gguf_tensor_types": w.tensor_types, "gguf_bytes": (tmp / "peer.gguf").stat().st_size,
                  "kv_cache": "f16 (llama.cpp's default)", "note": "tensors without an exact GGUF type are "
                  "re-quantized to llama.cpp's nearest type (the peer a llama.cpp user would run)"})
    return LlamaCppModel(tmp / "peer.gguf", n_ctx=n_ctx, logits_all=False, kv_type="f16")


def validate_local(folder: Path, target: Target, opts: ValidateOptions = ValidateOptions(),
                   on_step: Callable[[str], None] = lambda s: None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    from ..container import read_container
    from ..evaluate import tokenize, wikitext_text
    model = read_container(folder / "model.cllm")
    ids = tokenize(model.tokenizer, wikitext_text())
    rec: dict[str, Any] = {"device": {"name": "local", "transport": "local"}, "machine": machine_facts()}
    rec["equivalence"] = compare(folder, model, ids[:opts.tokens], opts.backends, opts.tol, opts.interpret_triton,
                                 on_step)
    n_ctx = opts.prompt + opts.new_tokens + 16
    prompt = ids[: opts.prompt].tolist()
    rss0 = psutil.Process().memory_info().rss
    name, runner, why = primary_runner(folder, model, target, n_ctx)
    with tempfile.TemporaryDirectory(prefix="cllm-peer-") as td:
        runners = {name: runner} if runner is not None else {}
        if runner is not None:
            runner.speed(prompt[:8], 2)
            rec["memory"] = {"runner_rss_growth": measured(psutil.Process().memory_info().rss - rss0, "bytes",
                             "psutil RSS before loading / after one run of the runner (same process)", runner=name)}
        else:
            rec["memory"] = {"runner_rss_growth": not_measured("bytes", why)}
        if opts.peer and name != "llama.cpp" and runner is not None:
            on_step("lowering the same IR to GGUF for the llama.cpp peer")
            rec["latency_peer"] = {}
            peer = _peer(model, Path(td), n_ctx, rec["latency_peer"])
            if peer is not None:
                runners[PEER] = peer
        if runners:
            on_step(f"latency: {', '.join(runners)} interleaved, {opts.repeats} repeats")
            rec["latency"] = time_runners(runners, prompt, opts.new_tokens, opts.repeats, progress)
            rec["latency_ratio_vs_peer"] = ratios(rec["latency"], PEER)
        else:
            rec["latency"] = {name: {"status": "not_measured", "reason": why}}
            rec["latency_ratio_vs_peer"] = {}
        rec["energy"] = _energy(runners.get(name), name, prompt, opts, target, model, why)
        for r in runners.values():
            r.close()
    from ..measure import peak_rss_bytes
    rec["memory"]["peak_rss"] = measured(peak_rss_bytes(), "bytes",
                                         "VmHWM: peak RSS of this process so far (compile, "
                                         "the torch reference and every runner)")
    c = model.config
    rec["memory"]["kv_cache"] = kv_cache_bytes(c, (512, 2048, c.max_position_embeddings), 2 if name == "llama.cpp" else 4)
    if opts.batches:
        on_step(f"batch sweep {opts.batches} (torch reference)")
        from ..backends.torch_ref import build_torch_model
        rec["batch_sweep"] = batch_sweep(TorchRunner(build_torch_model(model)), prompt, min(opts.new_tokens, 8), opts.batches)
    return rec


def _energy(runner: Any, name: str, prompt: list[int], opts: ValidateOptions, target: Target, model: Any,
            why: str) -> dict[str, Any]:
    """J/token of a decode run (8-token prompt, so prefill is a small share) by the first working
    reader, and always the labelled estimate from the target table beside it."""
    out: dict[str, Any] = {"estimate": estimate(target, weight_stream_bytes(model))}
    if runner is None:
        out["measured"] = not_measured("J/token", why)
        return out
    kind = "gpu" if name == "triton" else "jetson" if target.name.startswith("jetson") else "cpu"
    n = max(opts.new_tokens * 4, 32)
    out["measured"], _ = measure(lambda: (runner.speed(prompt[:8], n), n)[1], default_readers(kind))
    out["measured"]["runner"] = name
    return out
