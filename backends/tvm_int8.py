"""Matmul with int8 activations and integer dot products: AVX-512 VNNI (`vpdpbusd`: 64 u8 x s8
products per instruction) or AVX2 (`vpmaddubsw` + `vpmaddwd`, llama.cpp's Q8-activation path there).

Per scale block j of B = gcd(group, K) inputs, each row's activations are quantized to int8 with one
fp32 scale (max |a| / 127, as llama.cpp's Q8 activations), then

    P[j, n] = sa[j] * sum_k (code[k, n] - off) * aq[k]      integer dot products, 4 codes per lane
    C[n]    = sum_j s[j, n] * (P[j, n] - (zero[j, n] - off) * sa[j] * sum_k aq[k])   (+ min * ... for mins)

The weights are the .cllm's codes (tvm_layout.pack_int8 puts 4 consecutive codes of a column in one
32-bit lane: nibbles for <= 4 bits, bytes for 5-8), so both instruction sets read one layout. On AVX2
each 64-byte row is two 256-bit halves: `vpmaddubsw` (u8 x s8 pairs -> s16) then `vpmaddwd` with
ones (s16 pairs -> s32) gives what one `vpdpbusd` gives. Nibble codes stay unsigned (off = 0; at most
2 x 15 x 127 per pair, no saturation); byte codes are shifted to s8 (off = 128) and multiplied as
|c| x sign(a, c), llama.cpp's trick for Q8 x Q8, which keeps a pair within 2 x 128 x 127 < 2^15.
VNNI sums in s32 and needs no shift. Written with explicit vectors: no schedule applies to it.
Decode and generation's prefill use it; evaluation keeps fp32 activations.
"""
from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as T

from .tvm_layout import Layout


CHUNKS = 8  # parallel tasks over the 16-column tiles; TVM's pool spreads them over its threads


def gemm_int8(lay: Layout, rows: int | None = None) -> tirx.PrimFunc:
    """C[m, :] with int8 activations; rows = 1: decode (static shapes), None: symbolic rows (prefill)."""
    K, N, G = lay.k, lay.n, lay.group
    B = math.gcd(G, K)
    J, NT, NG, KB8, R = K // B, N // 16, lay.ngroups, B // 8, lay.int8_rows
    wide = lay.bits > 4
    body, body_one = _body_macro(K, G, B, J, NT, KB8, lay.zero, float(1 << (lay.bits - 1)), lay.int8, wide,
                                 min(NT, CHUNKS))
    sym = lay.zero == "sym"  # no zero-point array: the signatures differ, the bodies are shared (Z unread)
    if rows == 1 and sym:
        @T.prim_func(private=True, s_tir=False)
        def one_sym(A: T.Buffer((1, K), "float32"), Q: T.Buffer((NT, K // R, 64), "uint8"),
                    S: T.Buffer((NT, NG, 16), "float16"), C: T.Buffer((1, N), "float32")) -> None:
            T.func_attr({"tirx.noalias": True})
            body_one(A, Q, S, S, C)
        return one_sym
    if rows == 1:
        @T.prim_func(private=True, s_tir=False)
        def one(A: T.Buffer((1, K), "float32"), Q: T.Buffer((NT, K // R, 64), "uint8"),
                S: T.Buffer((NT, NG, 16), "float16"), Z: T.Buffer((NT, NG, 16), "float16"),
                C: T.Buffer((1, N), "float32")) -> None:
            T.func_attr({"tirx.noalias": True})
            body_one(A, Q, S, Z, C)
        return one
    if sym:
        @T.prim_func(private=True, s_tir=False)
        def gemm_sym(a: T.handle, Q: T.Buffer((NT, K // R, 64), "uint8"), S: T.Buffer((NT, NG, 16), "float16"),
                     c: T.handle) -> None:
            T.func_attr({"tirx.noalias": True})
            M = T.int64()
            A = T.match_buffer(a, (M, K), "float32")
            C = T.match_buffer(c, (M, N), "float32")
            body(A, Q, S, S, C, M)
        return gemm_sym

    @T.prim_func(private=True, s_tir=False)
    def gemm(a: T.handle, Q: T.Buffer((NT, K // R, 64), "uint8"), S: T.Buffer((NT, NG, 16), "float16"),
             Z: T.Buffer((NT, NG, 16), "float16"), c: T.handle) -> None:
        T.func_attr({"tirx.noalias": True})
        M = T.int64()
        A = T.match_buffer(a, (M, K), "float32")
        C = T.match_buffer(c, (M, N), "float32")
        body(A, Q, S, Z, C, M)
    return gemm


def _quantize_activations():  # the shared prologue, as a TVMScript macro: 8 lanes at a time
    @T.macro
    def quantize(A, aq, sa, asum, m, J: int, B: int):
        for j in range(J):
            mx = T.alloc_buffer((8,), "float32", scope="local")
            mx[T.ramp(0, 1, 8)] = T.broadcast(T.float32(1e-30), 8)
            for k8 in range(B // 8):
                mx[T.ramp(0, 1, 8)] = T.max(mx[T.ramp(0, 1, 8)], T.fabs(A[m, T.ramp(j * B + k8 * 8, 1, 8)]))
            for r in range(1, 8):
                mx[0] = T.max(mx[0], mx[r])
            sa[m, j] = mx[0] / T.float32(127.0)
            tot = T.alloc_buffer((8,), "int32", scope="local")
            tot[T.ramp(0, 1, 8)] = T.broadcast(0, 8)
            for k8 in range(B // 8):
                v = T.Cast("int32x8", T.round(A[m, T.ramp(j * B + k8 * 8, 1, 8)] / T.broadcast(sa[m, j], 8)))
                aq[m, T.ramp(j * B + k8 * 8, 1, 8)] = T.Cast("int8x8", v)
                tot[T.ramp(0, 1, 8)] = tot[T.ramp(0, 1, 8)] + v
            for r in range(1, 8):
                tot[0] = tot[0] + tot[r]
            asum[m, j] = T.Cast("float32", tot[0]) * sa[m, j]
    return quantize


def _dot_vnni():
    @T.macro
    def dot(Q, aq, acc, nt, m0, j, KB8: int, RB: int):
        for kb in range(KB8):
            kk = j * KB8 + kb
            v = T.reinterpret("int32x16", Q[nt, kk, T.ramp(0, 1, 64)])
            lo = T.bitwise_and(v, T.broadcast(0x0F0F0F0F, 16))
            hi = T.bitwise_and(T.shift_right(v, T.broadcast(4, 16)), T.broadcast(0x0F0F0F0F, 16))
            for r in T.unroll(RB):  # one unpack of the codes serves RB rows: RB independent chains
                a_lo = T.broadcast(T.reinterpret("int32", aq[m0 + r, T.ramp(kk * 8, 1, 4)]), 16)
                a_hi = T.broadcast(T.reinterpret("int32", aq[m0 + r, T.ramp(kk * 8 + 4, 1, 4)]), 16)
                acc[T.ramp(r * 16, 1, 16)] = T.call_llvm_pure_intrin(
                    "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[T.ramp(r * 16, 1, 16)],
                    T.reinterpret("int8x64", lo), T.reinterpret("int8x64", a_lo))
                acc[T.ramp(r * 16, 1, 16)] = T.call_llvm_pure_intrin(
                    "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[T.ramp(r * 16, 1, 16)],
                    T.reinterpret("int8x64", hi), T.reinterpret("int8x64", a_hi))
    return dot


def _dot_avx2():
    """The same sums as _dot_vnni, on two 8-column halves of 256 bits each."""
    @T.macro
    def dot(Q, aq, acc, nt, m0, j, KB8: int, RB: int):
        for kb in range(KB8):
            kk = j * KB8 + kb
            for h in range(2):
                v = T.reinterpret("int32x8", Q[nt, kk, T.ramp(h * 32, 1, 32)])
                lo = T.reinterpret("int8x32", T.bitwise_and(v, T.broadcast(0x0F0F0F0F, 8)))
                hi = T.reinterpret("int8x32", T.bitwise_and(T.shift_right(v, T.broadcast(4, 8)), T.broadcast(0x0F0F0F0F, 8)))
                for r in T.unroll(RB):
                    a_lo = T.reinterpret("int8x32", T.broadcast(T.reinterpret("int32", aq[m0 + r, T.ramp(kk * 8, 1, 4)]), 8))
                    a_hi = T.reinterpret("int8x32", T.broadcast(T.reinterpret("int32", aq[m0 + r, T.ramp(kk * 8 + 4, 1, 4)]), 8))
                    pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", lo, a_lo) + \
                        T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", hi, a_hi)  # <= 4 x 15 x 127
                    acc[T.ramp(r * 16 + h * 8, 1, 8)] = acc[T.ramp(r * 16 + h * 8, 1, 8)] + T.call_llvm_pure_intrin(
                        "int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16))
    return dot


def _dot_vnni_wide():
    """Byte codes: two 4-row vectors per 8 rows, used as they are (unsigned)."""
    @T.macro
    def dot(Q, aq, acc, nt, m0, j, KB8: int, RB: int):
        for kb in range(KB8):
            kk = j * KB8 + kb
            for q in range(2):
                w = T.reinterpret("int8x64", Q[nt, kk * 2 + q, T.ramp(0, 1, 64)])
                for r in T.unroll(RB):
                    a = T.broadcast(T.reinterpret("int32", aq[m0 + r, T.ramp(kk * 8 + q * 4, 1, 4)]), 16)
                    acc[T.ramp(r * 16, 1, 16)] = T.call_llvm_pure_intrin(
                        "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[T.ramp(r * 16, 1, 16)], w,
                        T.reinterpret("int8x64", a))
    return dot


def _dot_avx2_wide():
    """Byte codes shifted to s8 (c = code ^ 0x80 = code - 128): |c| x sign(a, c) per pair."""
    @T.macro
    def dot(Q, aq, acc, nt, m0, j, KB8: int, RB: int):
        for kb in range(KB8):
            kk = j * KB8 + kb
            for q in range(2):
                for h in range(2):
                    c = T.bitwise_xor(T.reinterpret("int8x32", Q[nt, kk * 2 + q, T.ramp(h * 32, 1, 32)]),
                                      T.broadcast(T.int8(-128), 32))
                    mag = T.max(c, T.broadcast(T.int8(0), 32) - c)
                    for r in T.unroll(RB):
                        a = T.reinterpret("int8x32", T.broadcast(T.reinterpret("int32", aq[m0 + r, T.ramp(kk * 8 + q * 4, 1, 4)]), 8))
                        pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", mag,
                                                        T.call_llvm_pure_intrin("int8x32", "llvm.x86.avx2.psign.b", a, c))
                        acc[T.ramp(r * 16 + h * 8, 1, 8)] = acc[T.ramp(r * 16 + h * 8, 1, 8)] + T.call_llvm_pure_intrin(
                            "int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16))
    return dot


DOTS = {("vnni", False): _dot_vnni, ("avx2", False): _dot_avx2, ("vnni", True): _dot_vnni_wide,
        ("avx2", True): _dot_avx2_wide}
ROW_BLOCK = 4  # rows per register block in prefill (decode: one)


def _tile_macro(J: int, B: int, G: int, KB8: int, zero: str, half: float, off: float, dot):
    """RB rows x one 16-column tile: integer dots per block j, then scale and zero correction in fp32."""
    @T.macro
    def tile(Q, S, Z, C, aq, sa, asum, nt, m0, RB: int):
        out = T.alloc_buffer((RB * 16,), "float32", scope="local")
        acc = T.alloc_buffer((RB * 16,), "int32", scope="local")
        for r in T.unroll(RB):
            out[T.ramp(r * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
        for j in range(J):
            for r in T.unroll(RB):
                acc[T.ramp(r * 16, 1, 16)] = T.broadcast(0, 16)
            dot(Q, aq, acc, nt, m0, j, KB8, RB)
            g = (j * B) // G
            s = T.Cast("float32x16", S[nt, g, T.ramp(0, 1, 16)])
            for r in T.unroll(RB):
                m = m0 + r
                p = T.Cast("float32x16", acc[T.ramp(r * 16, 1, 16)]) * T.broadcast(sa[m, j], 16)
                if zero == "sym":
                    out[T.ramp(r * 16, 1, 16)] = out[T.ramp(r * 16, 1, 16)] + s * (
                        p - T.broadcast(T.float32(half) * asum[m, j], 16))
                elif zero == "float":
                    out[T.ramp(r * 16, 1, 16)] = out[T.ramp(r * 16, 1, 16)] + s * (
                        p + T.broadcast(T.float32(off) * asum[m, j], 16)) + \
                        T.Cast("float32x16", Z[nt, g, T.ramp(0, 1, 16)]) * T.broadcast(asum[m, j], 16)
                else:
                    out[T.ramp(r * 16, 1, 16)] = out[T.ramp(r * 16, 1, 16)] + s * (
                        p - (T.Cast("float32x16", Z[nt, g, T.ramp(0, 1, 16)]) - T.broadcast(T.float32(off), 16))
                        * T.broadcast(asum[m, j], 16))
        for r in T.unroll(RB):
            C[m0 + r, T.ramp(nt * 16, 1, 16)] = out[T.ramp(r * 16, 1, 16)]
    return tile


def _body_macro(K: int, G: int, B: int, J: int, NT: int, KB8: int, zero: str, half: float, isa: str,
                wide: bool, CH: int):
    """Quantize the activations row by row, then per 16-column tile (CH parallel chunks of tiles,
    each tile's codes read once for all rows, ROW_BLOCK rows at a time): integer dots per block, scaled and
    zero-corrected in fp32. `zero` (sym | int | float), `isa` (vnni | avx2) and `wide` are Python
    constants: one branch is emitted."""
    PER = -(-NT // CH)
    off = 128.0 if wide and isa == "avx2" else 0.0  # the dots saw code - off
    quantize = _quantize_activations()
    tile = _tile_macro(J, B, G, KB8, zero, half - off, off, DOTS[(isa, wide)]())

    @T.macro
    def body(A, Q, S, Z, C, M):
        aq = T.alloc_buffer((M, K), "int8")
        sa = T.alloc_buffer((M, J), "float32")
        asum = T.alloc_buffer((M, J), "float32")
        for m in T.parallel(M):
            quantize(A, aq, sa, asum, m, J, B)
        for ch in T.parallel(CH):
            for t in range(PER):
                nt = ch * PER + t
                if nt < NT:
                    for mb in range(M // ROW_BLOCK):
                        tile(Q, S, Z, C, aq, sa, asum, nt, mb * ROW_BLOCK, ROW_BLOCK)
                    for m in range(M // ROW_BLOCK * ROW_BLOCK, M):
                        tile(Q, S, Z, C, aq, sa, asum, nt, m, 1)

    @T.macro
    def body_one(A, Q, S, Z, C):  # decode: one row, every shape static
        aq = T.alloc_buffer((1, K), "int8")
        sa = T.alloc_buffer((1, J), "float32")
        asum = T.alloc_buffer((1, J), "float32")
        quantize(A, aq, sa, asum, 0, J, B)
        for ch in T.parallel(CH):
            for t in range(PER):
                nt = ch * PER + t
                if nt < NT:
                    tile(Q, S, Z, C, aq, sa, asum, nt, 0, 1)
    return body, body_one
