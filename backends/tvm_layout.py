"""Weight layouts for the TVM backend: compressed tensors as the arrays the kernels read.

A linear weight W [N out, K in] is stored *transposed* and cut into tiles of T output columns
(T = 64 when N allows), codes packed along K: a CPU kernel vectorises over the T columns of a
tile with contiguous loads and a broadcast activation (no gathers, no horizontal sums), and
streams each tile as one contiguous run of memory (prefetch-friendly); a GPU kernel coalesces
over T:

  q  uint8 [N / T, ceil(K / per), T]   `per` codes per byte (8 for 1-bit ... 1 for 5-8 bits)
  s  f16   [N / T, ceil(K / G), T]     per-group scales (quant, and codebooks with scales)
  z  f16   [N / T, ceil(K / G), T]     integer zero points (exact in f16), or
  m  f16   [N / T, ceil(K / G), T]     llama.cpp-style mins (w = code * s + m)
  lut f16  [nlut, 2^bits]              scalar codebook (one per tensor, or one per output row)
  w  f32   [N / T, K, T]               dense weights

Nothing is dequantised ahead of time: the arrays hold exactly the .cllm's codes and scales.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BackendError
from ..reprs import Dense, Encoded, Quantized, Representation
from ..reprs_codebook import Codebook


@dataclass(frozen=True)
class Layout:
    """Static facts a kernel is generated from (one kernel per distinct layout and shape)."""

    kind: str            # dense | quant | lut
    k: int               # input features
    n: int               # output features
    bits: int = 32       # code bits (quant/lut)
    group: int = 0       # scale group along K (0: no scales)
    zero: str = "none"   # quant: sym | int | float
    nlut: int = 0        # lut: 1 or n
    tile: int = 1        # output columns per contiguous tile
    int8: str = ""       # int8-activation decode layout, and its dot instruction: "" | vnni | avx2

    @property
    def pack_bits(self) -> int:
        """Bits a code occupies in its byte: 1, 2, 4 or 8 (3-bit codes take 4: one shift, no straddling)."""
        return next(p for p in (1, 2, 4, 8) if p >= self.bits)

    @property
    def per(self) -> int:
        return 8 // self.pack_bits

    @property
    def int8_rows(self) -> int:
        """Rows of K per 64-byte row of an int8 layout: 8 for nibbles (<= 4 bits), 4 for bytes."""
        return 8 if self.bits <= 4 else 4

    @property
    def ngroups(self) -> int:
        return -(-self.k // self.group) if self.group else 0

    @property
    def tag(self) -> str:
        """A short name for kernels: q4g128z, lut4g64, dense..."""
        if self.kind == "dense":
            return "dense"
        z = {"sym": "s", "int": "z", "float": "m"}.get(self.zero, "")
        rows = "r" if self.nlut > 1 else ""
        return f"{'q' if self.kind == 'quant' else 'lut'}{self.bits}g{self.group}{z}{rows}{INT8_TAG.get(self.int8, '')}"

    def arrays(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(suffix, shape, dtype) of each array, in kernel argument order."""
        nt, t = self.n // self.tile, self.tile
        if self.kind == "dense":
            return [("w", (nt, self.k, t), "float32")]
        out = [("q", (nt, self.k // self.int8_rows, 64) if self.int8 else (nt, -(-self.k // self.per), t), "uint8")]
        if self.kind == "lut":
            out.append(("lut", (self.nlut, 1 << self.bits), "float16"))
        if self.group:
            out.append(("s", (nt, self.ngroups, t), "float16"))
        if self.zero == "int":
            out.append(("z", (nt, self.ngroups, t), "float16"))
        elif self.zero == "float":
            out.append(("m", (nt, self.ngroups, t), "float16"))
        return out


INT8_TAG = {"vnni": "v", "avx2": "a"}  # kernel-name suffixes


def int8_eligible(rep: Representation, n: int, k: int) -> bool:
    """The int8-activation kernel (tvm_int8) takes integer codes (1-8 bits), in tiles of 16
    columns, K in whole 8-groups and scale groups in whole 8-groups."""
    return (isinstance(rep, Quantized) and n % 16 == 0 and k % 8 == 0 and math.gcd(rep.group, k) % 8 == 0)


def pack_int8(codes: np.ndarray, bits: int = 4) -> np.ndarray:
    """codes [N, K] -> uint8 [N / 16, K / R, 64], one 32-bit lane of a 64-byte row = 4 consecutive
    codes of one column (vpdpbusd's operand). <= 4 bits (R = 8): byte (t, b, 4 * lane + r) holds the
    codes of rows 8b + r (low nibble) and 8b + 4 + r (high nibble) of column 16t + lane, unpacked by
    a mask or a shift; 5-8 bits (R = 4): byte (t, b, 4 * lane + r) is the code of row 4b + r."""
    n, k = codes.shape
    if bits > 4:
        c = codes.T.reshape(k // 4, 4, n // 16, 16).astype(np.uint8)
        return np.ascontiguousarray(c.transpose(2, 0, 3, 1).reshape(n // 16, k // 4, 64))
    c = codes.T.reshape(k // 8, 2, 4, n // 16, 16).astype(np.uint8)
    return np.ascontiguousarray((c[:, 0] | (c[:, 1] << 4)).transpose(2, 0, 3, 1).reshape(n // 16, k // 8, 64))


def tile_for(n: int) -> int:
    return next(t for t in (64, 16, 1) if n % t == 0)


def tiled(a: np.ndarray, tile: int) -> np.ndarray:
    """[rows, N] -> [N / tile, rows, tile]: each tile of output columns contiguous."""
    rows, n = a.shape
    return np.ascontiguousarray(a.reshape(rows, n // tile, tile).transpose(1, 0, 2))


def pack_codes(codes: np.ndarray, layout: Layout) -> np.ndarray:
    """codes [N, K] (uint) -> uint8 [N / T, ceil(K / per), T], code k of column n in bits (k % per) * pack_bits."""
    per, pb = layout.per, layout.pack_bits
    n, k = codes.shape
    kp = -(-k // per)
    t = np.zeros((kp * per, n), np.uint8)
    t[:k] = codes.T.astype(np.uint8)
    t = t.reshape(kp, per, n)
    out = np.zeros((kp, n), np.uint8)
    for i in range(per):
        out |= (t[:, i] << (i * pb)).astype(np.uint8)
    return tiled(out, layout.tile)


def _f16t(a: np.ndarray, tile: int) -> np.ndarray:
    return tiled(a.astype(np.float16).T, tile)


def lower_weight(rep: Representation, shape: tuple[int, ...], name: str,
                 int8: str = "") -> tuple[Layout, dict[str, np.ndarray]]:
    """The arrays one 2-D weight becomes; BackendError for a representation no kernel reads.
    `int8` (vnni | avx2): use the int8-activation decode layout where the weight allows it."""
    if isinstance(rep, Encoded):
        rep = rep.inner()  # entropy coding is for the disk; kernels read the decoded codes
    n, k = shape
    int8 = int8 if int8 and int8_eligible(rep, n, k) else ""
    tile = 16 if int8 else tile_for(n)
    if isinstance(rep, Dense):
        return Layout("dense", k, n, tile=tile), {"w": tiled(rep.decode().numpy().T, tile)}
    if isinstance(rep, Quantized):
        zero = "float" if rep.mins is not None else "sym" if rep.zeros is None else "int"
        lay = Layout("quant", k, n, rep.bits, rep.group, zero, tile=tile, int8=int8)
        out = {"q": pack_int8(rep.codes, rep.bits) if int8 else pack_codes(rep.codes, lay), "s": _f16t(rep.scales, tile)}
        if zero == "int":
            out["z"] = _f16t(rep.zeros, tile)  # type: ignore[union-attr]
        elif zero == "float":
            out["m"] = _f16t(rep.mins, tile)  # type: ignore[union-attr]
        return lay, out
    if isinstance(rep, Codebook) and rep.d == 1 and rep.stages == 1:
        lay = Layout("lut", k, n, rep.kbits, rep.group if rep.scales is not None else 0, nlut=rep.nlut, tile=tile)
        out = {"q": pack_codes(rep.codes[0], lay), "lut": np.ascontiguousarray(rep.luts[0, :, :, 0])}
        if rep.scales is not None:
            out["s"] = _f16t(rep.scales, tile)
        return lay, out
    raise BackendError(f"the TVM backend has no kernel for '{rep.describe()}' weights", tensor=name,
                       hint=f"TVM kernels read: {supported_text()}; recompile with one of those "
                            "(e.g. quant{bits=4,group=128} or codebook{bits=4})")


def supported_text() -> str:
    return ("dense f32/f16/bf16, quant int1-8 any group (sym, int zero or float min), "
            "scalar codebook (one stage, per-tensor or per-row LUT, optional group scales)")
