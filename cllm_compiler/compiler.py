"""The compile driver: load -> passes -> container -> evaluation -> report, as one API call."""
from __future__ import annotations

import ctypes
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import __version__
from .atomic import atomic_dir, write_bytes
from .container import read_container, write_container
from .reprs import Representation
from .ir import Model, TensorNode
from .loading import file_sha256, load_model
from .measure import peak_rss_bytes
from .passes_base import Pass, PassContext, PassStats
from .passmanager import Instrument, IRDumpInstrument, PassManager, TimingInstrument
from .pipeline import pipeline_text
from .targets import Target


@dataclass
class CompileResult:
    out: Path
    report: dict[str, Any]
    stats: list[PassStats] = field(default_factory=list)


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {"cllm": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "gguf", "zstandard", "numpy", "safetensors", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def source_size(path: str | None) -> int | None:
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.glob("*.safetensors")) or None


def tensor_row(node: TensorNode) -> dict[str, Any]:
    """Rate facts of one tensor: stored bits, bits before entropy coding, ideal order-0 bits."""
    from .reprs import Encoded
    bits = node.rep.storage_bits()
    enc = isinstance(node.rep, Encoded)
    return {"name": node.name, "shape": list(node.shape), "rep": node.rep.describe(), "bits": bits,
            "bpw": bits / node.numel, "stored_bytes": bits // 8,
            "nominal_bits": node.rep.nominal_bits() if enc else bits,  # type: ignore[attr-defined]
            "entropy_bits": round(node.rep.ideal_bits()) if enc else bits}  # type: ignore[attr-defined]


def tensor_table(rows: list[dict[str, Any]], stats: list[PassStats]) -> list[dict[str, Any]]:
    quality = {t.name: t for s in stats for t in s.tensors if t.mse is not None}
    for row in rows:
        q = quality.get(row["name"])
        row["mse"] = q.mse if q else None
        # lossless tensors have infinite SQNR; JSON has no Infinity, so null
        row["sqnr_db"] = q.sqnr_db if q and q.sqnr_db != float("inf") else None
        row["out_mse"] = q.out_mse if q else None
    return rows


class Released(Representation):
    """Placeholder for a tensor already written to disk by a streaming compile."""

    kind = "released"

    def __init__(self, describe: str, bits: int) -> None:
        self._describe, self._bits = describe, bits

    def storage_bits(self) -> int:
        return self._bits

    def describe(self) -> str:
        return self._describe


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, so a streaming compile's
    RSS would creep up tensor by tensor)."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None
_M_MMAP_THRESHOLD = -3


def configure_malloc() -> None:
    """Serve every allocation >= 1 MiB by mmap so freed blocks go straight back to the OS.

    glibc otherwise raises its mmap threshold after the first big free and then keeps
    block-sized temporaries on a fragmented heap: measured +500 MB per 256 MiB tensor.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def compress_and_write(manager: PassManager, model: Model, path: Path,
                       progress: Callable[[str], None] | None) -> tuple[int, list[PassStats], list[dict[str, Any]]]:
    """Run the pipeline and write the container; streams tensor by tensor when every pass is local."""
    stats: list[PassStats] = []
    rows: list[dict[str, Any]] = []
    if not manager.streamable:
        stats = manager.run(model)
        size = write_container(model, path, progress=progress)
        return size, stats, [tensor_row(n) for n in model]

    def streamed() -> Iterator[TensorNode]:
        for node in manager.stream(model, stats):
            yield node  # the writer stores it before asking for the next one
            rows.append(tensor_row(node))
            node.rep = Released(rows[-1]["rep"], rows[-1]["bits"])
            release_memory()
    size = write_container(model, path, progress=progress, nodes=streamed())
    return size, stats, rows


def compile_model(model_path: Path, target: Target, passes: list[Pass], out: Path, *, force: bool = False,
                  eval_windows: int = 0, seqlen: int = 2048, dump_ir: Path | None = None,
                  instruments: list[Instrument] | None = None,
                  on_step: Callable[[str], None] = lambda s: None,
                  write_progress: Callable[[str], None] | None = None,
                  eval_progress: Callable[[int, int], None] | None = None, lower: bool = True,
                  reuse: tuple[Path, ...] = (), plan: dict[str, Any] | None = None, threads: int = 1) -> CompileResult:
    """Compile `model_path` for `target`; the artifact folder appears only when complete.
    `lower=False` stops at the portable .cllm (no backend build); `reuse`: folders whose cached
    calibration may be reused (a multi-target run shares one); `plan`: recorded in the report;
    `threads`: the runners' thread count, for the speed estimate beside the measured speed."""
    t0 = time.perf_counter()
    lowers = lower and target.backend in LOWERED
    if lowers and target.backend in ("tvm", "triton", "onnx"):
        target.check_formats(passes)  # refuse before any work
    configure_malloc()
    pm_instruments: list[Instrument] = [TimingInstrument(), *(instruments or [])]
    if dump_ir:
        pm_instruments.append(IRDumpInstrument(dump_ir))
    ctx = PassContext(reuse=((Path(out),) if Path(out).is_dir() else ()) + tuple(reuse))
    manager = PassManager(passes, pm_instruments, ctx)
    with atomic_dir(out, force=force) as tmp:
        on_step(f"loading {model_path}")
        model = load_model(model_path)
        source_reps = {n.name: n.rep for n in model}  # lazy handles, no dense copies
        ctx.workdir, ctx.source = tmp, dict(source_reps)
        ctx.model_sha256 = str(model.source.get("sha256", ""))
        t_load = time.perf_counter() - t0
        on_step("compressing and writing model.cllm")
        size, stats, rows = compress_and_write(manager, model, tmp / "model.cllm", write_progress)
        t_compile = time.perf_counter() - t0
        report: dict[str, Any] = {
            "target": target.name, "backend": target.backend, "pipeline": pipeline_text(passes),
            **({"plan": plan} if plan else {}), "source_sha256": str(model.source.get("sha256", "")),
            "params": model.num_params, "artifact_bytes": size, "bits_per_weight": size * 8 / model.num_params,
            "source_bytes": source_size(model.source.get("path")), "f16_bytes": model.num_params * 2,
            "timing": {"load_s": round(t_load, 2), "compile_s": round(t_compile, 2),
                       "passes": pm_instruments[0].records},  # type: ignore[attr-defined]
            "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
            "lowering": _lowering_note(target),  # replaced below when the backend is built
            "estimates": {"decode_tokens_per_s_bandwidth_bound": target.decode_tokens_per_s_estimate(size),
                          "label": "estimated: target bandwidth / artifact bytes (bandwidth-only roofline, no "
                                   "measurement; see decode_tokens_per_s for the model with compute)"},
            "streamed": manager.streamable,
            "tensors": tensor_table(rows, stats), "notes": [n for s in stats for n in s.notes],
        }
        from .targets.speed import container_tensors
        from .backends.tvm_backend import decode_int8
        int8 = target.backend == "tvm" and bool(decode_int8(target))  # as its package is (or would be) built
        report["estimates"].update(speed_estimates(model.config, container_tensors(tmp / "model.cllm"), target,
                                                   threads, int8))
        if lowers:  # lowering reads the .cllm back, so the backend sees exactly what is on disk
            on_step(f"lowering: {target.backend} backend")
            report["lowering"] = _backend_module(target.backend).lower_artifact(
                read_container(tmp / "model.cllm"), tmp, target)
        if eval_windows:
            on_step(f"evaluating {eval_windows} window(s) of {seqlen} tokens against the uncompressed model")
            report["eval"] = evaluate_artifact(tmp / "model.cllm", model, source_reps, eval_windows, seqlen,
                                               eval_progress, backend=target.backend if lowers else None)
        manifest = {"format": "cllm-artifact", "version": 1, "source": model.source,
                    "pipeline": pipeline_text(passes), "target": target.name, "tools": tool_versions(),
                    "model_cllm_sha256": file_sha256(tmp / "model.cllm")}
        write_bytes(tmp / "report.json", json.dumps(report, indent=1).encode())
        write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    return CompileResult(out, report, stats)


def speed_estimates(config: Any, tensors: list, target: Target, threads: int, int8: bool) -> dict[str, Any]:
    """Decode tok/s estimated (bandwidth and compute) on the target's whole device, and, for a
    target this CPU runs, on this host at `threads` threads: the number to hold against the
    measured one. `int8`: the package's integer weights run the int8-activation kernels."""
    from .targets.host import runs_here
    from .targets.speed import decode_estimate, matmul_split
    nbytes, counts = matmul_split(tensors, config.tie_word_embeddings)
    args = (target, nbytes, counts, config.num_layers)
    out = {"decode_tokens_per_s": decode_estimate(*args, int8=int8)}
    if runs_here(target):  # else nothing runs here, so there is nothing to compare
        out["decode_tokens_per_s_this_host"] = decode_estimate(*args, threads=threads, int8=int8, on_host=True)
    return out


LOWERED = ("gguf", "tvm", "triton", "onnx")  # backends/<name>_backend.py: lower_artifact, models, speed


def _backend_module(backend: str) -> Any:
    import importlib
    return importlib.import_module(f"{__package__}.backends.{backend}_backend")


def _lowering_note(target: Target) -> str:
    return (f"backend '{target.backend}' lowering not run (not built yet, or --no-lower): the artifact is the "
            "portable .cllm, validated with the PyTorch reference runner on this CPU")


def evaluate_artifact(cllm: Path, model: Model, source_reps: dict, windows: int, seqlen: int,
                      progress: Callable[[int, int], None] | None,
                      backend: str | None = None) -> dict[str, Any]:
    """PPL before/after and KLD, running the artifact *as read back from disk*; with `backend`,
    also the lowered model in that backend's runtime (llama.cpp, TVM) on the same windows."""
    from .backends.torch_ref import build_torch_model
    from .evaluate import evaluate, tokenize, wikitext_text
    compressed = read_container(cllm)
    ref_model = Model(model.config, model.tokenizer, source=model.source)
    for node in model:
        ref_model.tensors[node.name] = type(node)(node.name, node.shape, source_reps[node.name], node.role)
    ids = tokenize(model.tokenizer, wikitext_text())
    ref, net = build_torch_model(ref_model), build_torch_model(compressed)
    n = min(windows, ids.numel() // seqlen)
    extra: dict[str, Any] = {}
    if backend is not None:
        extra = _backend_module(backend).models(cllm.parent, seqlen)
    res = evaluate({"reference": ref, "compressed": net, **extra}, ids, reference=ref, seqlen=seqlen, max_windows=n,
                   progress=(lambda w: progress(w + 1, n)) if progress else None,
                   pairs=tuple(("compressed", k) for k in extra))
    out = {"reference": res["reference"].to_dict(), "compressed": res["compressed"].to_dict(),  # type: ignore[union-attr]
           "runner": "torch-cpu-fp32 (reference runner)"}
    if extra:
        out["backends"] = {}
    for k, runner in extra.items():
        out["backends"][k] = {**res[k].to_dict(), "vs_torch_same_weights": res[f"{k}|compressed"],  # type: ignore[union-attr]
                              "speed": _backend_module(backend).speed(runner, ids)}  # type: ignore[arg-type]
        runner.close()
    return out
