"""Validation on a device: quality of a backend's logits against the torch reference of the same
artifact, and the estimates reported where a device cannot be measured."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def compare_logits(ref: torch.Tensor, dev: torch.Tensor, ids: torch.Tensor) -> dict[str, Any]:
    """KLD(ref || dev), top-1 agreement and both PPLs over the same tokens (logits [T, V])."""
    p, q = torch.log_softmax(ref.double(), -1), torch.log_softmax(dev.double(), -1)
    kld = (p.exp() * (p - q)).sum(-1)
    nll = lambda lp: float(-lp[:-1].gather(1, ids[1:, None]).mean())  # noqa: E731
    return {"tokens": int(ids.numel()), "kld_mean": float(kld.mean()), "kld_max": float(kld.max()),
            "top1_agree": float((ref.argmax(-1) == dev.argmax(-1)).double().mean()),
            "ppl_torch": math.exp(nll(p)), "ppl_device": math.exp(nll(q))}


def quality(cllm: Path, device_logits: Callable[[list[int]], np.ndarray], tokens: int) -> dict[str, Any]:
    """Score the first `tokens` WikiText-2 test tokens on the device and in torch."""
    from .backends.torch_ref import build_torch_model
    from .container import read_container
    from .evaluate import tokenize, wikitext_text
    model = read_container(cllm)
    ids = tokenize(model.tokenizer, wikitext_text())[:tokens]
    with torch.inference_mode():
        ref = build_torch_model(model)(ids[None]).logits[0]
    dev = torch.from_numpy(np.asarray(device_logits(ids.tolist()), dtype=np.float32))
    return compare_logits(ref, dev, ids)


def estimates(manifest: dict[str, Any], package: Path) -> dict[str, Any]:
    """Memory from the package's sizes (weights + a full KV cache); energy: not measurable over RPC."""
    from .backends.tvm_kernels import cache_shape
    c = manifest["config"]
    kv = 4 * math.prod(cache_shape(c["num_layers"], c["num_kv_heads"], c["head_dim"], manifest["max_len"]))
    weights = (package / manifest["weights"]).stat().st_size
    return {"memory_mib": (weights + kv) / 2**20,
            "memory_label": "estimated: weights file + f32 KV cache at max_len (TVM RPC exposes no memory query)",
            "energy": "not measured (no power counter over TVM RPC; read tegrastats on the device)"}
