"""The `tvm` backend: lower a compiled artifact to a TVM package and validate it on this host.

Package (folder `tvm/` in the artifact): `model.so` (Relax VM executable + kernels),
`weights.safetensors` (compressed layout, see tvm_layout), `tvm.json` (parameter order, model
config, target, toolchain versions). Jetson targets build a cross-compiled package instead
(tvm_jetson.py).
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..atomic import atomic_path, write_bytes
from ..errors import BackendError
from ..ir import Model
from ..safeio import read_json
from .tvm_build import DEFAULT_MAX_LEN, compile_module, lower

PACKAGE_DIR = "tvm"
INT8_NAMES = {"vnni": "AVX-512 VNNI vpdpbusd", "avx2": "AVX2 vpmaddubsw + vpmaddwd"}
LIBRARY, WEIGHTS = "model.so", "weights.safetensors"


def tvm_target(target: Any) -> dict[str, Any]:
    t = target.extra.get("tvm_target")
    if not t:
        from ..errors import TargetError
        raise TargetError(f"target '{target.name}' has no tvm_target", hint="add one to targets.toml")
    return dict(t)


def decode_int8(target: Any) -> str:
    """The integer dot instruction (vnni | avx2) of targets whose table says decode_activations =
    "int8": generation (decode and prefill) quantizes activations to int8, as llama.cpp does;
    evaluation stays fp32. "" when off. CLLM_DECODE_ACTIVATIONS=f32 turns it off for a build."""
    wanted = os.environ.get("CLLM_DECODE_ACTIVATIONS", target.extra.get("decode_activations", "f32"))
    return str(target.extra.get("int8_dot", "")) if wanted == "int8" else ""


def write_weights(path: Path, params: list[tuple[str, np.ndarray]]) -> None:
    from safetensors.numpy import save_file
    with atomic_path(path) as tmp:
        save_file({n: np.ascontiguousarray(a) for n, a in params}, str(tmp))


def package_manifest(model: Model, low: Any, target: Any, library: str, extra: dict[str, Any] | None = None) -> dict:
    import tvm
    return {"format": "cllm-tvm-package", "version": 1, "target": target.name, "tvm_target": tvm_target(target),
            "library": library, "weights": WEIGHTS, "params": [n for n, _ in low.params],
            "config": model.config.to_dict(), "max_len": low.max_len, "functions": ["prefill", "prefill_all", "decode"],
            "kernels": kernel_counts(low),
            "isa": list(target.extra.get("isa", [])),
            "tvm_version": tvm.__version__, "built_on": platform.machine(), **(extra or {})}


def host_missing_isa(manifest: dict[str, Any]) -> list[str]:
    """CPU features the package was compiled for that this host lacks (running it would SIGILL).
    A host whose flags cannot be read lacks them all: the package is not run."""
    from ..errors import TargetError
    from ..targets.host import host_flags, missing_flags
    try:
        return missing_flags(manifest, host_flags())
    except TargetError:
        return list(manifest.get("isa", [])) or ["(CPU flags unreadable)"]


def lower_artifact(model: Model, folder: Path, target: Any, max_len: int = DEFAULT_MAX_LEN,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build folder/tvm/ for `target`; return the lowering facts for the report."""
    if tvm_target(target)["kind"] == "cuda":
        from .tvm_jetson import build_package
        return build_package(model, folder, target, max_len, progress)
    pkg = folder / PACKAGE_DIR
    pkg.mkdir(exist_ok=True)
    int8 = decode_int8(target)
    low = lower(model, max_len, progress, decode_int8=int8)
    ex = compile_module(low, tvm_target(target), progress)
    with atomic_path(pkg / LIBRARY) as tmp:
        ex.export_library(str(tmp))
    extra = {"decode_activations": f"int8 ({INT8_NAMES[int8]}) for integer weights in decode and generation's prefill" if int8 else "f32"}
    return finish_package(model, low, target, pkg, LIBRARY, extra, low.notes,
                          f"TVM Relax VM on this host ({platform.machine()}), target {tvm_target(target)}")


def finish_package(model: Model, low: Any, target: Any, pkg: Path, library: str, extra: dict[str, Any],
                   notes: list[str], runtime: str) -> dict[str, Any]:
    """Write the weights and tvm.json beside the library; return the lowering facts for the report."""
    from ..loading import file_sha256
    write_weights(pkg / WEIGHTS, low.params)
    doc = package_manifest(model, low, target, library, extra)
    doc["sha256"] = {name: file_sha256(pkg / name) for name in sorted(p.name for p in pkg.iterdir() if p.is_file())}
    write_bytes(pkg / "tvm.json", json.dumps(doc, indent=1).encode())
    size = sum(f.stat().st_size for f in pkg.iterdir())
    return {"backend": "tvm", "file": PACKAGE_DIR + "/", "bytes": size, "bits_per_weight": size * 8 / model.num_params,
            "weights_bytes": (pkg / WEIGHTS).stat().st_size, "tensor_types": kernel_counts(low), "notes": notes,
            "runtime": runtime}


def kernel_counts(low: Any) -> dict[str, int]:
    """How many weights each kernel layout serves (q4g128z: int4, group 128, integer zero point)."""
    out: dict[str, int] = {}
    for lay in low.layouts.values():
        out[lay.tag] = out.get(lay.tag, 0) + 1
    return dict(sorted(out.items()))


def runs_here(folder: Path) -> bool:
    """Whether the artifact holds a TVM package this host can run (a CPU build for this machine)."""
    pkg = folder / PACKAGE_DIR
    if not (pkg / "tvm.json").is_file():
        return False
    try:
        man = read_json(pkg / "tvm.json", inside=folder, error=BackendError)
        return man["tvm_target"]["kind"] == "llvm" and man["built_on"] == platform.machine() and not host_missing_isa(man)
    except (KeyError, TypeError):
        raise BackendError(f"{pkg / 'tvm.json'} is not a TVM package manifest cllm wrote",
                           hint="the artifact is damaged; compile it again") from None


def models(folder: Path, seqlen: int) -> dict[str, Any]:
    """The package as an evaluator model when it runs on this host."""
    if not runs_here(folder):
        return {}
    from .tvm_run import TvmModel
    return {"tvm": TvmModel(folder / PACKAGE_DIR)}


def speed(model: Any, ids: torch.Tensor, prompt: int = 256, new_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Median prefill/decode tokens/s of a TvmModel on this host (measured, not estimated)."""
    from ..evaluate import runner_speed
    return runner_speed(model, ids, prompt, new_tokens, repeats, model.threads,
                        "measured: TVM on this host's CPU")
