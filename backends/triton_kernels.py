"""Triton kernels: one fused dequantise-and-multiply kernel for every weight format.

y[m, n] = sum_k x[m, k] * W[n, k] (+ (x V^T)[m, :] U^T[:, n] with a low-rank correction),
where W's tile is rebuilt in registers from the compressed tensors of `triton_layout` and is
never written to memory. `KIND` picks the tile loader at compile time (dense, quant, lut, vq,
sparse), so each format is its own specialised kernel; batch 1-8 multiplies by broadcasting
(GEMV: one output column per lane, the K reduction in registers), batch >= 16 with `tl.dot`
(tensor cores). `SPLIT` programs share a long K so that a batch-1 GEMV fills every SM; their
fp32 partial sums land in a [SPLIT, M, N] buffer that the host sums in a fixed order
(deterministic, unlike atomics).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # keep fused multiply-add; silences 3.9's warning
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

KINDS = {"dense": 0, "quant": 1, "lut": 2, "vq": 3, "sparse": 4}


@triton.jit
def _codes(q_ptr, offs_k, offs_n, mask, N, BITS: tl.constexpr):
    """Codes at [offs_k, offs_n] from int32 words packed along K (32 // BITS codes a word)."""
    per: tl.constexpr = 32 // BITS
    words = tl.load(q_ptr + (offs_k // per)[:, None] * N + offs_n[None, :], mask=mask, other=0)
    return (words >> ((offs_k % per) * BITS)[:, None]) & ((1 << BITS) - 1)


@triton.jit
def _group_scale(w, s_ptr, z_ptr, m_ptr, offs_k, offs_n, mask, N, BITS: tl.constexpr,
                 GROUP: tl.constexpr, ZMODE: tl.constexpr):
    """(q - zero) * s, zero = 2^(BITS-1) (ZMODE 0) or a stored integer (1); or q * s + min (2)."""
    g = (offs_k // GROUP)[:, None] * N + offs_n[None, :]
    s = tl.load(s_ptr + g, mask=mask, other=0.0).to(tl.float32)
    if ZMODE == 0:
        w = (w - (1 << (BITS - 1))) * s
    elif ZMODE == 1:
        w = (w - tl.load(z_ptr + g, mask=mask, other=0).to(tl.float32)) * s
    else:
        w = w * s + tl.load(m_ptr + g, mask=mask, other=0.0).to(tl.float32)
    return w


@triton.jit
def _w_tile(offs_k, offs_n, kmask, N, K, q_ptr, s_ptr, z_ptr, m_ptr, lut_ptr, c_ptr, idx_ptr, w_ptr,
            KIND: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, ZMODE: tl.constexpr,
            PER_ROW: tl.constexpr, D: tl.constexpr, STAGES: tl.constexpr, NKEEP: tl.constexpr,
            MGRP: tl.constexpr, IBITS: tl.constexpr):
    """The fp32 weight tile W^T[offs_k, offs_n], decoded from the compressed tensors."""
    mask = kmask[:, None] & (offs_n < N)[None, :]
    if KIND == 0:
        w = tl.load(w_ptr + offs_k[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    elif KIND == 1:
        w = _codes(q_ptr, offs_k, offs_n, mask, N, BITS).to(tl.float32)
        w = _group_scale(w, s_ptr, z_ptr, m_ptr, offs_k, offs_n, mask, N, BITS, GROUP, ZMODE)
    elif KIND == 2 or KIND == 3:
        ncode: tl.constexpr = 1 << BITS
        row = offs_n * (STAGES * ncode * D) if PER_ROW else offs_n * 0  # this column's codebook
        if KIND == 2:
            w = tl.load(lut_ptr + row[None, :] + _codes(q_ptr, offs_k, offs_n, mask, N, BITS),
                        mask=mask, other=0.0)
        else:  # VQ: vector j = k // D, component k % D, STAGES additive codebooks
            kd = N * (offs_k // D)
            w = tl.zeros(mask.shape, tl.float32)
            for st in tl.static_range(STAGES):
                code = tl.load(c_ptr + st * (K // D) * N + kd[:, None] + offs_n[None, :], mask=mask, other=0)
                w += tl.load(lut_ptr + row[None, :] + st * ncode * D + code.to(tl.int32) * D
                             + (offs_k % D)[:, None], mask=mask, other=0.0)
        if GROUP > 0:
            s = tl.load(s_ptr + (offs_k // GROUP)[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
            w = w * s.to(tl.float32)
    else:  # N:M sparse: position k is kept value j = (k // M) * NKEEP + t if idx[j] == k % M
        w = tl.zeros(mask.shape, tl.float32)
        for t in tl.static_range(NKEEP):
            j = (offs_k // MGRP) * NKEEP + t
            pos = _codes(idx_ptr, j, offs_n, mask, N, IBITS)
            if BITS < 16:
                v = _codes(q_ptr, j, offs_n, mask, N, BITS).to(tl.float32)
                v = _group_scale(v, s_ptr, z_ptr, m_ptr, j, offs_n, mask, N, BITS, GROUP, ZMODE)
            else:
                v = tl.load(w_ptr + j[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            w += tl.where(pos == (offs_k % MGRP)[:, None], v, 0.0)
    return w


@triton.jit
def _mac(acc, a, b, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    if USE_DOT:
        acc = tl.dot(a, b.to(a.dtype), acc, input_precision=PREC)
    else:
        acc += tl.sum(a.to(tl.float32)[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit
def mm_kernel(x_ptr, out_ptr, q_ptr, s_ptr, z_ptr, m_ptr, lut_ptr, c_ptr, idx_ptr, w_ptr, t_ptr, u_ptr,
              M, N, K, stride_xm, k_per_split,
              KIND: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, ZMODE: tl.constexpr,
              PER_ROW: tl.constexpr, D: tl.constexpr, STAGES: tl.constexpr, NKEEP: tl.constexpr,
              MGRP: tl.constexpr, IBITS: tl.constexpr, RANK: tl.constexpr, RANK_P: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """out[split, m, n] = partial sums of x[m, k] * W[n, k] over this program's share of K."""
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < k_hi
        w = _w_tile(offs_k, offs_n, kmask, N, K, q_ptr, s_ptr, z_ptr, m_ptr, lut_ptr, c_ptr, idx_ptr, w_ptr,
                    KIND, BITS, GROUP, ZMODE, PER_ROW, D, STAGES, NKEEP, MGRP, IBITS)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m < M)[:, None] & kmask[None, :], other=0.0)
        acc = _mac(acc, x, w, USE_DOT, PREC)
    if RANK > 0:  # fused low-rank epilogue: + t U^T with t = x V^T [M, RANK], added once (split 0)
        offs_r = tl.arange(0, RANK_P)
        rmask = offs_r < tl.where(pid_k == 0, RANK, 0)
        t = tl.load(t_ptr + offs_m[:, None] * RANK + offs_r[None, :],
                    mask=(offs_m < M)[:, None] & rmask[None, :], other=0.0)
        u = tl.load(u_ptr + offs_r[:, None] * N + offs_n[None, :],
                    mask=rmask[:, None] & (offs_n < N)[None, :], other=0.0).to(tl.float32)
        acc = _mac(acc, t, u, USE_DOT, PREC)
    out = out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc, mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])
