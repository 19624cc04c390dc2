"""GGUF tensor types for IR representations: which GGUF type holds a representation exactly,
the block bytes for it, and the measured re-quantization of everything else."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BackendError
from ..ir import TensorNode
from ..reprs import Dense, Encoded, Quantized, Representation
from ..reprs_ggml import GGMLBlocks
from . import ggml_lib

# types tried by 'requant', smallest first; K/i-quants need llama-cpp-python's ggml
REQUANT_TYPES = ("Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "IQ4_NL", "Q4_0", "Q4_1", "Q5_K", "Q5_0", "Q5_1", "Q6_K", "Q8_0")
_NUMPY_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")  # gguf-py can encode these itself


def exact_type(rep: Representation) -> str | None:
    """The GGUF type that holds `rep` bit-exactly, or None (nothing is decoded to tell)."""
    if isinstance(rep, Encoded):
        return exact_type_of(rep.inner_kind, rep.inner_meta, rep.shape)
    if isinstance(rep, Dense):
        return exact_type_of("dense", {"dtype": rep.dtype}, rep.shape)
    if isinstance(rep, GGMLBlocks):
        return rep.qtype
    if isinstance(rep, Quantized):
        meta = {"bits": rep.bits, "group": rep.group, "sym": rep.symmetric,
                "zero": "float" if rep.mins is not None else "int"}
        return exact_type_of("quant", meta, rep.codes.shape)
    return None


def exact_type_of(kind: str, meta: dict, shape: tuple[int, ...]) -> str | None:
    if kind == "dense":
        return {"f32": "F32", "f16": "F16", "bf16": "BF16"}[meta["dtype"]]
    if kind == GGMLBlocks.kind:
        return str(meta["type"])
    if kind == "quant" and meta["group"] == 32 and len(shape) == 2 and shape[1] % 32 == 0:
        if meta["sym"] and meta["bits"] in (4, 5, 8):
            return {4: "Q4_0", 5: "Q5_0", 8: "Q8_0"}[meta["bits"]]
        if meta.get("zero") == "float" and meta["bits"] in (4, 5):
            return {4: "Q4_1", 5: "Q5_1"}[meta["bits"]]
    return None


def quant_blocks(q: Quantized, kind: str) -> np.ndarray:
    """Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 block bytes [rows, row_bytes] from 32-group codes."""
    rows, cols = q.codes.shape
    codes = q.codes.reshape(rows, cols // 32, 32).astype(np.uint8)
    f16 = lambda a: a.astype("<f2").reshape(rows, cols // 32, 1).view(np.uint8)  # noqa: E731
    if kind == "Q8_0":
        qs = (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        return np.concatenate([f16(q.scales), qs], axis=-1).reshape(rows, -1)
    nib = (codes[..., :16] & 0x0F) | ((codes[..., 16:] & 0x0F) << 4)
    head = [f16(q.scales)] + ([f16(q.mins)] if kind in ("Q4_1", "Q5_1") else [])
    if kind in ("Q5_0", "Q5_1"):  # fifth bits, little-endian uint32 per block
        head.append(np.packbits(codes >> 4, axis=-1, bitorder="little"))
    return np.concatenate([*head, nib.astype(np.uint8)], axis=-1).reshape(rows, -1)


def _encode(w: np.ndarray, gtype: str) -> np.ndarray:
    if gtype in _NUMPY_TYPES:
        import gguf.quants
        return gguf.quants.quantize(w, getattr(gguf.GGMLQuantizationType, gtype))
    return ggml_lib.quantize(w, gtype)


def requant(w: torch.Tensor, budget_bits: float) -> tuple[np.ndarray, str, float]:
    """The GGUF type (no larger than `budget_bits` per weight when one fits) with the least
    squared error on `w`; returns (blocks, type, mse)."""
    cols = w.shape[1]
    encodable = REQUANT_TYPES if ggml_lib.available() else _NUMPY_TYPES
    types = [t for t in encodable if ggml_lib.fits(t, cols)]
    if not types:
        raise BackendError(f"no GGUF block type fits rows of {cols} weights", hint="use inexact=f16 or f32")
    bpw = {t: 8 * ggml_lib.row_bytes(t, cols) / cols for t in types}
    within = [t for t in types if bpw[t] <= budget_bits + 1e-9] or [min(types, key=bpw.__getitem__)]
    x, best = w.numpy(), None
    for t in within:
        blocks = _encode(x, t)
        mse = float(((GGMLBlocks(t, blocks, x.shape).decode().numpy() - x) ** 2).mean())
        if best is None or mse < best[2]:
            best = (blocks, t, mse)
    return best  # type: ignore[return-value]


def dense_data(t: torch.Tensor, kind: str) -> np.ndarray:
    return {"F32": lambda: t.numpy(), "F16": lambda: t.half().numpy(),
            "BF16": lambda: t.bfloat16().view(torch.int16).numpy()}[kind]()


def inexact_data(node: TensorNode, rep: Representation, t: torch.Tensor, inexact: str) -> tuple[str, np.ndarray, str]:
    bits = (node.rep.nominal_bits() if isinstance(node.rep, Encoded) else rep.storage_bits()) / node.numel
    sig = float(t.pow(2).mean()) or 1.0
    if inexact == "requant" and len(node.shape) == 2:
        data, kind, mse = requant(t, bits)
        return kind, data, (f"{rep.describe()} ({bits:.2f} bpw) has no GGUF type: re-quantized to {kind} "
                            f"({8 * data.nbytes / node.numel:.2f} bpw), extra MSE {mse:.3e} "
                            f"(SQNR {10 * np.log10(sig / max(mse, 1e-30)):.1f} dB vs the IR)")
    kind = "F32" if inexact in ("requant", "f32") else inexact.upper()
    back = {"F32": t, "F16": t.half().float(), "BF16": t.bfloat16().float()}[kind]
    mse = float((back - t).pow(2).mean())
    return kind, dense_data(t, kind), f"{rep.describe()} has no exact GGUF type: written as {kind}, extra MSE {mse:.3e}"
