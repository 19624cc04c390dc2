"""TIR kernels of the TVM backend, written as tensor expressions (schedules live in tvm_schedule.py).

The matmul dequantises inside its reduction: each weight is decoded from its packed code at
the moment it is multiplied, so a dense copy of a compressed weight never exists in memory.
`m` (tokens) is symbolic, so one kernel serves decode (m = 1, a GEMV) and prefill (a GEMM);
the schedule picks the GEMV or GEMM strategy per function.
"""
from __future__ import annotations

import math
from typing import Any

from tvm import te, tirx, topi

from .tvm_layout import Layout

F32 = "float32"


def _inputs(lay: Layout, prefix: str) -> list[te.Tensor]:
    return [te.placeholder(shape, dtype, name=f"{prefix}_{suffix}") for suffix, shape, dtype in lay.arrays()]


def at(lay: Layout, arr: te.Tensor, row: Any, n: Any) -> Any:
    """arr[row, n] of a tiled [N / T, rows, T] array."""
    return arr[n // lay.tile, row, n % lay.tile]


def dequant(lay: Layout, arrs: list[te.Tensor], k: Any, n: Any) -> Any:
    """Weight (k, n) as float32, decoded from the layout's arrays."""
    a = {t.name.rsplit("_", 1)[1]: t for t in arrs}
    if lay.kind == "dense":
        return at(lay, a["w"], k, n).astype(F32)
    return _scaled(lay, a, k // lay.group if lay.group else 0, n, _code_value(lay, a, k, n))


def _scaled(lay: Layout, a: dict[str, te.Tensor], g: Any, n: Any, x: Any, count: Any = None) -> Any:
    """Group g's scale and zero applied to x: a code (count None) or a sum of `count` activation-weighted
    codes (the grouped GEMV, where the zero point is subtracted once per group as zero * sum(a))."""
    if lay.kind == "lut":
        return x * at(lay, a["s"], g, n).astype(F32) if lay.group else x
    s = at(lay, a["s"], g, n).astype(F32)
    if lay.zero == "float":
        low = at(lay, a["m"], g, n).astype(F32)
        return x * s + (low if count is None else low * count)
    zero = at(lay, a["z"], g, n).astype(F32) if lay.zero == "int" else tirx.const(float(1 << (lay.bits - 1)), F32)
    return (x - (zero if count is None else zero * count)) * s


def matmul(lay: Layout, m: int | None = None, int8_rows: bool = False) -> tirx.PrimFunc:
    """C[m, N] = A[m, K] @ deq(W)[K, N]; m symbolic unless given. m = 1 (decode) takes the
    grouped GEMV below, which keeps scales and zero points out of the per-weight work. An int8
    layout runs the int8-activation kernel (tvm_int8) at m = 1, and for every m with `int8_rows`
    (generation's prefill); otherwise its codes are decoded to fp32 (evaluation stays exact)."""
    int8 = bool(lay.int8) and (m == 1 or int8_rows)
    if int8:
        from .tvm_int8 import gemm_int8
        func = gemm_int8(lay, 1 if m == 1 else None)
    elif m == 1 and lay.kind != "dense":
        func = gemv_grouped(lay)
    else:
        rows = m if m is not None else tirx.Var("m", "int64")
        a = te.placeholder((rows, lay.k), F32, name="A")
        arrs = _inputs(lay, "W")
        w = te.compute((lay.k, lay.n), lambda k, n: dequant(lay, arrs, k, n), name="deq")
        r = te.reduce_axis((0, lay.k), name="k")
        c = te.compute((rows, lay.n), lambda i, j: te.sum(a[i, r] * w[r, j], axis=r), name="matmul")
        func = te.create_prim_func([a, *arrs, c])
    func = func.with_attr("cllm.kernel", f"matmul_{lay.tag}")
    func = func.with_attr("cllm.int8", int(int8))  # explicit vectors: no schedule applies
    return func.with_attr("cllm.gemv", int(m == 1)).with_attr("cllm.n", lay.n).with_attr("cllm.k", lay.k).with_attr("cllm.tile", lay.tile)


def gemv_grouped(lay: Layout) -> tirx.PrimFunc:
    """Decode GEMV, factored per scale group: with B = gcd(group, K) inputs per block j,

        P[j, n] = sum_{k in j} a[k] * code[k, n]        (or lut[code]: one convert + one FMA per weight)
        C[n]    = sum_j s[j, n] * (P[j, n] - zero[j, n] * sum_{k in j} a[k])     (+ min * asum)

    which is exact algebra (float rounding aside) and ~3x faster than decoding each weight."""
    blk = math.gcd(lay.group, lay.k) if lay.group else lay.k
    nblk = lay.k // blk
    a = te.placeholder((1, lay.k), F32, name="A")
    arrs = _inputs(lay, "W")
    w = {t.name.rsplit("_", 1)[1]: t for t in arrs}
    kin, k2, jj = te.reduce_axis((0, blk), "kin"), te.reduce_axis((0, blk), "k2"), te.reduce_axis((0, nblk), "j")
    part = te.compute((1, nblk, lay.n), lambda i, j, n: te.sum(
        a[i, j * blk + kin] * _code_value(lay, w, j * blk + kin, n), axis=kin), name="partial")
    asum = te.compute((1, nblk), lambda i, j: te.sum(a[i, j * blk + k2], axis=k2), name="asum")

    g = (jj * blk) // lay.group if lay.group else 0
    c = te.compute((1, lay.n), lambda i, n: te.sum(
        _scaled(lay, w, g, n, part[i, jj, n], asum[i, jj]), axis=jj), name="matmul")
    return te.create_prim_func([a, *arrs, c])


def _code_value(lay: Layout, w: dict[str, te.Tensor], k: Any, n: Any) -> Any:
    """The unscaled value of weight (k, n): its integer code, or its LUT entry."""
    if lay.int8 and lay.bits > 4:  # see tvm_layout.pack_int8
        return w["q"][n // 16, k // 4, (n % 16) * 4 + k % 4].astype(F32)
    if lay.int8:
        byte = w["q"][n // 16, k // 8, (n % 16) * 4 + k % 4]
        return ((byte >> ((k % 8) // 4 * 4).astype("uint8")) & tirx.const(15, "uint8")).astype(F32)
    per, pb = lay.per, lay.pack_bits
    byte = at(lay, w["q"], k // per, n)
    code = (byte >> ((k % per) * pb).astype("uint8")) & tirx.const((1 << pb) - 1, "uint8") if per > 1 else byte
    if lay.kind == "lut":
        return w["lut"][n if lay.nlut > 1 else 0, code.astype("int32")].astype(F32)
    return code.astype(F32)


def embed(lay: Layout) -> tirx.PrimFunc:
    """E[m, K] = deq(W)[:, ids] (the table is stored like a linear weight: [hidden, vocab])."""
    rows = tirx.Var("m", "int64")
    ids = te.placeholder((rows,), "int32", name="ids")
    arrs = _inputs(lay, "W")
    e = te.compute((rows, lay.k), lambda i, d: dequant(lay, arrs, d, ids[i]), name="embed")
    return te.create_prim_func([ids, *arrs, e]).with_attr("cllm.kernel", "embed")


def rope(heads: int, dim: int) -> tirx.PrimFunc:
    """Hugging Face's rotate-half RoPE at positions pos .. pos + m - 1 (angles in float32 like HF)."""
    rows, pos = tirx.Var("m", "int64"), tirx.Var("pos", "int64")
    x = te.placeholder((rows, heads, dim), F32, name="x")
    inv = te.placeholder((dim // 2,), F32, name="inv_freq")
    half = dim // 2

    def f(i: Any, h: Any, d: Any) -> Any:
        ang = (pos + i).astype(F32) * inv[d % half]
        rot = tirx.Select(d < half, -x[i, h, tirx.min(d + half, dim - 1)], x[i, h, tirx.max(d - half, 0)])
        return x[i, h, d] * tirx.cos(ang) + rot * tirx.sin(ang)
    out = te.compute((rows, heads, dim), f, name="rope")
    return te.create_prim_func([x, inv, pos, out]).with_attr("cllm.kernel", "rope")


def cache_shape(layers: int, kv_heads: int, dim: int, max_len: int) -> tuple[int, int, int, int]:
    """[layer, k|v, kv head, max_len * dim]: keys stored transposed (d * max_len + t) so that scores
    vectorise over positions; values as (t * dim + d) so that the weighted sum vectorises over d."""
    return (layers, 2, kv_heads, max_len * dim)


def attention(layers: int, heads: int, kv_heads: int, dim: int, max_len: int) -> tirx.PrimFunc:
    """Causal attention of m new queries at pos over the cache's first pos + m entries (GQA).

    Positions are processed in blocks of 16 (the context rounded up; max_len is a multiple of
    16): the extra positions are masked out, and the cache starts zeroed, so they stay finite."""
    rows, pos, layer = tirx.Var("m", "int64"), tirx.Var("pos", "int64"), tirx.Var("layer", "int64")
    q = te.placeholder((rows, heads, dim), F32, name="q")
    cache = te.placeholder(cache_shape(layers, kv_heads, dim, max_len), F32, name="cache")
    total, grp, scale = (pos + rows + 15) // 16 * 16, heads // kv_heads, 1.0 / dim ** 0.5
    d = te.reduce_axis((0, dim), name="d")
    s = te.compute((heads, rows, total), lambda h, i, t: te.sum(
        q[i, h, d] * cache[layer, 0, h // grp, d * max_len + t], axis=d), name="scores")
    masked = te.compute((heads, rows, total), lambda h, i, t: tirx.Select(
        t <= pos + i, s[h, i, t] * scale, tirx.const(-3.0e38, F32)), name="masked")
    t1 = te.reduce_axis((0, total), name="t1")
    mx = te.compute((heads, rows), lambda h, i: te.max(masked[h, i, t1], axis=t1), name="rowmax")
    shifted = te.compute((heads, rows, total), lambda h, i, t: masked[h, i, t] - mx[h, i], name="shifted")
    e = topi.fast_exp(shifted)  # polynomial exp: vectorises (llvm.exp would be scalar libm calls)
    t2 = te.reduce_axis((0, total), name="t2")
    den = te.compute((heads, rows), lambda h, i: te.sum(e[h, i, t2], axis=t2), name="rowsum")
    t3 = te.reduce_axis((0, total), name="t3")
    acc = te.compute((rows, heads, dim), lambda i, h, dd: te.sum(
        e[h, i, t3] * cache[layer, 1, h // grp, t3 * dim + dd], axis=t3), name="attn_acc")
    o = te.compute((rows, heads, dim), lambda i, h, dd: acc[i, h, dd] / den[h, i], name="attn")
    return te.create_prim_func([q, cache, pos, layer, o]).with_attr("cllm.kernel", "attention")


def last_row(width: int) -> tirx.PrimFunc:
    rows = tirx.Var("m", "int64")
    x = te.placeholder((rows, width), F32, name="x")
    out = te.compute((1, width), lambda _, j: x[rows - 1, j], name="last")
    return te.create_prim_func([x, out]).with_attr("cllm.kernel", "last_row")


def kv_append(layers: int, kv_heads: int, dim: int, max_len: int) -> tirx.PrimFunc:
    """Write m new keys and values at positions pos.. of one layer, in place."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def append(var_cache: T.handle, var_k: T.handle, var_v: T.handle, pos: T.int64, layer: T.int64) -> None:
        m = T.int64()
        cache = T.match_buffer(var_cache, (layers, 2, kv_heads, max_len * dim), "float32")
        k = T.match_buffer(var_k, (m, kv_heads, dim), "float32")
        v = T.match_buffer(var_v, (m, kv_heads, dim), "float32")
        for i, h, d in T.grid(m, kv_heads, dim):
            with T.sblock("append"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                cache[layer, 0, vh, vd * max_len + pos + vi] = k[vi, vh, vd]
                cache[layer, 1, vh, (pos + vi) * dim + vd] = v[vi, vh, vd]
    return append.with_attr("cllm.kernel", "kv_append")
