import numpy as np
import pytest
import torch

from cllm_compiler.passes.quant import quantize_rtn
from cllm_compiler.reprs import Quantized


def _w(rows=64, cols=576, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * 0.05


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 128, 0])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_error_bounded_by_half_step(bits, group, sym):
    w = _w()
    q = quantize_rtn(w, bits, group, sym)
    dq = q.decode()
    assert dq.shape == w.shape and q.codes.max() < (1 << bits)
    g = q.group
    step = torch.from_numpy(q.scales.astype(np.float32)).repeat_interleave(g, dim=1)[:, :w.shape[1]]
    err = (dq - w).abs()
    # Inside the grid the error is at most half a step; rounding the integer zero point can
    # clip a group's extreme value by up to one more half step.
    assert bool((err <= step * 1.0 + 1e-6).all())
    inside = (err <= step * 0.5 + step * 2e-3 + 1e-7).float().mean()
    assert inside > 0.97


def test_more_bits_less_error():
    w = _w()
    errs = [float((quantize_rtn(w, b, 64, False).decode() - w).pow(2).mean()) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < errs[0] / 1000


def test_ragged_last_group_and_per_channel():
    w = _w(cols=576)
    q = quantize_rtn(w, 4, 128, False)
    assert q.scales.shape == (64, 5) and q.group == 128
    pc = quantize_rtn(w, 4, 0, False)
    assert pc.scales.shape == (64, 1) and pc.group == 576


def test_float_min_reproduces_a_q4_1_grid_exactly():
    # Weights that already sit on a Q4_1 grid (code*d + m per 32) come back unchanged.
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (8, 64), generator=g).float()
    codes[:, ::32] = 0
    codes[:, 1::32] = 15  # every block spans the full range
    d = (torch.rand(8, 2, generator=g) * 0.01 + 0.001).half().float().repeat_interleave(32, 1)
    m = (-torch.rand(8, 2, generator=g) * 0.05).half().float().repeat_interleave(32, 1)
    w = codes * d + m
    q = quantize_rtn(w, 4, 32, False, zero="float")
    assert torch.equal(q.decode(), w)


def test_storage_bits_match_record_bytes():
    w = _w(cols=576)
    for kw in ({}, {"sym": True}, {"zero": "float"}):
        q = quantize_rtn(w, 3, 128, kw.get("sym", False), kw.get("zero", "int"))
        meta, bufs = q.to_record()
        assert q.storage_bits() == 8 * sum(len(b) for b in bufs.values())
        back = Quantized.from_record(meta, bufs, tuple(w.shape))
        assert torch.equal(back.decode(), q.decode())


@pytest.mark.parametrize("kw", [{}, {"sym": True}, {"zero": "float"}])
def test_row_blocking_is_invisible(monkeypatch, kw):
    import cllm_compiler.passes.quant as quant
    w = _w(rows=70, cols=200)
    args = (w, 4, 64, kw.get("sym", False), kw.get("zero", "int"))
    whole = quant.quantize_rtn(*args)
    monkeypatch.setattr(quant, "_BLOCK_ELEMS", 16 * 200)
    blocked = quant.quantize_rtn(*args)
    assert np.array_equal(whole.codes, blocked.codes) and np.array_equal(whole.scales, blocked.scales)
    assert torch.equal(whole.decode(), blocked.decode())


def test_blockwise_sqnr_equals_whole_tensor():
    from cllm_compiler.ir import TensorNode
    from cllm_compiler.passes_base import sqnr_stats
    w = _w(rows=50, cols=96)
    q = quantize_rtn(w, 3, 32, False)
    node = TensorNode("model.layers.0.mlp.up_proj.weight", (50, 96), q)
    whole = sqnr_stats(node, w, q.decode())
    blocked = sqnr_stats(node, w, q.decode_rows, rows_per_block=7)
    assert blocked.mse == pytest.approx(whole.mse, rel=1e-9) and blocked.sqnr_db == pytest.approx(whole.sqnr_db)
    assert torch.equal(torch.cat([q.decode_rows(r, r + 7) for r in range(0, 50, 7)]), q.decode())
