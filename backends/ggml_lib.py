"""ctypes binding to ggml's own quantizers (the C library that llama-cpp-python ships).

gguf-py can read every GGML block type but writes only the simple ones (Q4_0..Q8_0); the
K-quants and i-quants need ggml's encoder. `ggml_quantize_chunk` takes a per-column
importance vector (llama.cpp's imatrix: mean x^2 of each input channel), which cllm fills
from its own calibration statistics. Loaded lazily: only GGUF lowering needs it.
"""
from __future__ import annotations

import ctypes
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import BackendError

# ggml's type numbers are gguf-py's GGMLQuantizationType values.
BLOCK_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
               "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS")
# llama.cpp's own substitute when a row is not a multiple of 256, as llama_model_quantize
# 0.3.36 logs it ("falling back to ...": Q2_K/Q3_K -> Q4_0 observed on SmolLM2)
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "IQ4_XS": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1",
            "Q6_K": "Q8_0", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
            "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL"}


INSTALL_HINT = "pip install 'cllm[gguf]' (builds llama.cpp from source, ~5 CPU-minutes)"


def qtype(name: str) -> int:
    import gguf
    try:
        return int(gguf.GGMLQuantizationType[name])
    except KeyError:
        raise BackendError(f"unknown GGML type '{name}'", hint=f"known: {', '.join(BLOCK_TYPES)}") from None


def block_shape(name: str) -> tuple[int, int]:
    """(weights per block, bytes per block) from gguf-py's table."""
    import gguf
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype(name))]


def row_bytes(name: str, cols: int) -> int:
    blk, size = block_shape(name)
    if cols % blk:
        raise BackendError(f"a row of {cols} weights is not a whole number of {name} blocks ({blk})",
                           hint=f"llama.cpp would use {FALLBACK.get(name, 'Q8_0')} for such rows")
    return cols // blk * size


def fits(name: str, cols: int) -> bool:
    return cols % block_shape(name)[0] == 0


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise BackendError("llama-cpp-python is not installed: K-quant/i-quant encoding needs ggml",
                           hint=INSTALL_HINT)
    path = Path(spec.origin).parent / "lib" / "libggml-base.so"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise BackendError(f"cannot load {path}: {e}", hint="reinstall llama-cpp-python") from e
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    """Whether ggml's encoder can be loaded (llama-cpp-python installed)."""
    try:
        _lib()
        return True
    except BackendError:
        return False


def requires_imatrix(name: str) -> bool:
    return bool(_lib().ggml_quantize_requires_imatrix(qtype(name)))


def quantize(w: np.ndarray, name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Encode a float [rows, cols] matrix as GGML blocks: uint8 [rows, row_bytes]."""
    rows, cols = w.shape
    src = np.ascontiguousarray(w, dtype=np.float32)
    dst = np.zeros((rows, row_bytes(name, cols)), dtype=np.uint8)
    imat = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    if imat is not None and imat.shape != (cols,):
        raise BackendError(f"importance vector has shape {imat.shape}, expected ({cols},)")
    if imat is None and requires_imatrix(name):
        raise BackendError(f"{name} needs an importance matrix", hint="run 'calibrate' before this pass")
    n = _lib().ggml_quantize_chunk(qtype(name), src.ctypes.data, dst.ctypes.data, 0, rows, cols,
                                   None if imat is None else imat.ctypes.data)
    if n != dst.nbytes:
        raise BackendError(f"ggml wrote {n} bytes for {name}, expected {dst.nbytes}")
    return dst

