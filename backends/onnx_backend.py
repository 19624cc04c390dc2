"""ONNX backend (`onnx-cpu`): lowering to onnx/ (model.onnx + external data + onnx.json), the
onnxruntime runner for evaluation, and tokens/s. See onnx_export for the weight mapping."""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import write_bytes
from ..ir import Model

PACKAGE_DIR = "onnx"
FILE = "model.onnx"


def runnable() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def lower_artifact(model: Model, folder: Path, target: Any = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from .onnx_export import export_onnx
    t0 = time.perf_counter()
    pkg = folder / PACKAGE_DIR
    if progress:
        progress("exporting to ONNX (torch.onnx dynamo)")
    notes: list[dict] = []
    forms = export_onnx(model, pkg / FILE, notes)
    size = sum(f.stat().st_size for f in pkg.iterdir())
    c = model.config
    man = {"file": FILE, "layers": c.num_layers, "kv_heads": c.num_kv_heads, "head_dim": c.head_dim,
           "opset": 18, "weights": forms, "bytes": size}
    write_bytes(pkg / "onnx.json", (json.dumps(man, indent=1, sort_keys=True) + "\n").encode())
    lookup = forms.pop("model.embed_tokens.weight (lookup)")
    nbits = sum(v == "nbits" for v in forms.values())
    dense = len(forms) - nbits - len(notes)
    emb = "GatherBlockQuantized" if lookup == "gbq" else "dense f32 Gather"
    return {"backend": "onnx", "file": f"{PACKAGE_DIR}/{FILE}", "package": PACKAGE_DIR, "bytes": size,
            "bits_per_weight": size * 8 / model.num_params,
            "tensor_types": {"MatMulNBits": nbits + len(notes), "MatMul f32": dense, emb: 1},
            "notes": [f"{n['tensor']}: {n['from']} re-quantized to {n['to']}, relative weight MSE {n['rel_mse']:.2e}"
                      for n in notes],
            "matmulnbits": nbits + len(notes), "dense": dense, "requantized": notes, "embedding": emb, "seconds": round(time.perf_counter() - t0, 1),
            "runtime": "onnxruntime (CPU EP)" if runnable() else "onnxruntime not installed: written, not run"}


def models(folder: Path, seqlen: int) -> dict[str, Any]:
    if not runnable() or not (folder / PACKAGE_DIR / "onnx.json").is_file():
        return {}
    from .onnx_run import OrtModel
    return {"onnxruntime": OrtModel(folder / PACKAGE_DIR, max_len=seqlen)}


def speed(model: Any, ids: torch.Tensor, prompt: int = 256, new_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    from ..evaluate import runner_speed
    return runner_speed(model, ids, prompt, new_tokens, repeats, int(os.environ.get("CLLM_THREADS", "1")),
                        "measured: onnxruntime CPU EP on this host")
