"""Decode GEMV with int8 activations and integer dot products: AVX-512 VNNI (`vpdpbusd`: 64 u8 x s8
products per instruction) or AVX2 (`vpmaddubsw` + `vpmaddwd`, llama.cpp's Q8-activation path there).

Per scale block j of B = gcd(group, K) inputs, activations are quantized to int8 with one fp32
scale (max |a| / 127, as llama.cpp's Q8 activations), then

    P[j, n] = sa[j] * sum_k code[k, n] * aq[k]               integer dot products, 4 codes per lane
    C[n]    = sum_j s[j, n] * (P[j, n] - zero[j, n] * sa[j] * sum_k aq[k])      (+ min * ... for mins)

The weights are the same 4-bit codes (tvm_layout.pack_int8 puts 4 consecutive codes of a column in
one 32-bit lane), so both instruction sets read one layout; on AVX2 each 64-byte row is two 256-bit
halves, and `vpmaddubsw` (u8 x s8 pairs -> s16; at most 2 x 15 x 127, no saturation) followed by
`vpmaddwd` with ones (s16 pairs -> s32) gives exactly what one `vpdpbusd` gives. Written with explicit
vectors: no schedule applies to it. Only decode (one token) uses it; prefill and evaluation keep
fp32 activations.
"""
from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as T

from .tvm_layout import Layout


def gemv_int8(lay: Layout) -> tirx.PrimFunc:
    K, N, G = lay.k, lay.n, lay.group
    B = math.gcd(G, K)
    J, NT, NG, KB8 = K // B, N // 16, lay.ngroups, B // 8
    body = _body_macro(K, G, B, J, NT, KB8, lay.zero, float(1 << (lay.bits - 1)), lay.int8)
    if lay.zero == "sym":  # no zero-point array: the signature differs, the body is shared
        @T.prim_func(private=True, s_tir=False)
        def gemv_sym(A: T.Buffer((1, K), "float32"), Q: T.Buffer((NT, K // 8, 64), "uint8"),
                     S: T.Buffer((NT, NG, 16), "float16"), C: T.Buffer((1, N), "float32")) -> None:
            T.func_attr({"tirx.noalias": True})
            body(A, Q, S, S, C)  # Z is never read for "sym"
        return gemv_sym

    @T.prim_func(private=True, s_tir=False)
    def gemv(A: T.Buffer((1, K), "float32"), Q: T.Buffer((NT, K // 8, 64), "uint8"),
             S: T.Buffer((NT, NG, 16), "float16"), Z: T.Buffer((NT, NG, 16), "float16"),
             C: T.Buffer((1, N), "float32")) -> None:
        T.func_attr({"tirx.noalias": True})
        body(A, Q, S, Z, C)
    return gemv


def _quantize_activations():  # the shared prologue, as a TVMScript macro
    @T.macro
    def quantize(A, aq, sa, asum, J: int, B: int):
        for j in range(J):
            mx = T.alloc_buffer((1,), "float32", scope="local")
            mx[0] = T.float32(1e-30)
            for k in range(B):
                mx[0] = T.max(mx[0], T.fabs(A[0, j * B + k]))
            sa[j] = mx[0] / T.float32(127.0)
            tot = T.alloc_buffer((1,), "int32", scope="local")
            tot[0] = 0
            for k in range(B):
                v = T.Cast("int32", T.round(A[0, j * B + k] / sa[j]))
                aq[j * B + k] = T.Cast("int8", v)
                tot[0] = tot[0] + v
            asum[j] = T.Cast("float32", tot[0]) * sa[j]
    return quantize


def _dot_vnni():
    @T.macro
    def dot(Q, aq, acc, nt, j, KB8: int):
        acc[T.ramp(0, 1, 16)] = T.broadcast(0, 16)
        for kb in range(KB8):
            kk = j * KB8 + kb
            v = T.reinterpret("int32x16", Q[nt, kk, T.ramp(0, 1, 64)])
            lo = T.bitwise_and(v, T.broadcast(0x0F0F0F0F, 16))
            hi = T.bitwise_and(T.shift_right(v, T.broadcast(4, 16)), T.broadcast(0x0F0F0F0F, 16))
            a_lo = T.broadcast(T.reinterpret("int32", aq[T.ramp(kk * 8, 1, 4)]), 16)
            a_hi = T.broadcast(T.reinterpret("int32", aq[T.ramp(kk * 8 + 4, 1, 4)]), 16)
            acc[T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[T.ramp(0, 1, 16)],
                T.reinterpret("int8x64", lo), T.reinterpret("int8x64", a_lo))
            acc[T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[T.ramp(0, 1, 16)],
                T.reinterpret("int8x64", hi), T.reinterpret("int8x64", a_hi))
    return dot


def _dot_avx2():
    """The same sums as _dot_vnni, on two 8-column halves of 256 bits each."""
    @T.macro
    def dot(Q, aq, acc, nt, j, KB8: int):
        acc[T.ramp(0, 1, 16)] = T.broadcast(0, 16)
        for kb in range(KB8):
            kk = j * KB8 + kb
            a_lo = T.reinterpret("int8x32", T.broadcast(T.reinterpret("int32", aq[T.ramp(kk * 8, 1, 4)]), 8))
            a_hi = T.reinterpret("int8x32", T.broadcast(T.reinterpret("int32", aq[T.ramp(kk * 8 + 4, 1, 4)]), 8))
            for h in range(2):
                v = T.reinterpret("int32x8", Q[nt, kk, T.ramp(h * 32, 1, 32)])
                lo = T.reinterpret("int8x32", T.bitwise_and(v, T.broadcast(0x0F0F0F0F, 8)))
                hi = T.reinterpret("int8x32", T.bitwise_and(T.shift_right(v, T.broadcast(4, 8)), T.broadcast(0x0F0F0F0F, 8)))
                pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", lo, a_lo) + \
                    T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", hi, a_hi)  # <= 4 x 15 x 127
                acc[T.ramp(h * 8, 1, 8)] = acc[T.ramp(h * 8, 1, 8)] + T.call_llvm_pure_intrin(
                    "int32x8", "llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16))
    return dot


def _body_macro(K: int, G: int, B: int, J: int, NT: int, KB8: int, zero: str, half: float, isa: str):
    """Quantize the activations, then per 16-column tile: integer dots per block, scaled and
    zero-corrected in fp32. `zero` (sym | int | float) and `isa` (vnni | avx2) are Python
    constants: one branch is emitted."""
    quantize, dot = _quantize_activations(), (_dot_vnni() if isa == "vnni" else _dot_avx2())

    @T.macro
    def body(A, Q, S, Z, C):
        aq = T.alloc_buffer((K,), "int8")
        sa = T.alloc_buffer((J,), "float32")
        asum = T.alloc_buffer((J,), "float32")
        quantize(A, aq, sa, asum, J, B)
        for nt in range(NT):  # serial: a T.parallel loop here put acc/out in memory (4.6x slower, 1 thread)
            out = T.alloc_buffer((16,), "float32", scope="local")
            acc = T.alloc_buffer((16,), "int32", scope="local")
            out[T.ramp(0, 1, 16)] = T.broadcast(T.float32(0), 16)
            for j in range(J):
                dot(Q, aq, acc, nt, j, KB8)
                g = (j * B) // G
                p = T.Cast("float32x16", acc[T.ramp(0, 1, 16)]) * T.broadcast(sa[j], 16)
                s = T.Cast("float32x16", S[nt, g, T.ramp(0, 1, 16)])
                if zero == "sym":
                    out[T.ramp(0, 1, 16)] = out[T.ramp(0, 1, 16)] + s * (p - T.broadcast(T.float32(half) * asum[j], 16))
                elif zero == "float":
                    out[T.ramp(0, 1, 16)] = out[T.ramp(0, 1, 16)] + s * p + \
                        T.Cast("float32x16", Z[nt, g, T.ramp(0, 1, 16)]) * T.broadcast(asum[j], 16)
                else:
                    out[T.ramp(0, 1, 16)] = out[T.ramp(0, 1, 16)] + s * (
                        p - T.Cast("float32x16", Z[nt, g, T.ramp(0, 1, 16)]) * T.broadcast(asum[j], 16))
            C[0, T.ramp(nt * 16, 1, 16)] = out[T.ramp(0, 1, 16)]
    return body
