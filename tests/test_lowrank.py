"""lowrank: exact at full rank; whitening lowers output error; correction of int3 residuals."""
from __future__ import annotations

import pytest
import torch

from cllm_compiler.container import read_container, write_container
from cllm_compiler.passes_base import PassContext
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.reprs import Quantized
from cllm_compiler.reprs_lowrank import LowRank
from tests.test_gptq import NAME, layer, out_err


def run(spec, cols=128, rows=64):
    model, cal, w, x = layer(rows=rows, cols=cols)
    PassManager(parse_pipeline(spec), ctx=PassContext(calib=cal)).run(model)
    return model.tensors[NAME].rep, w, x, model


def test_full_rank_svd_reconstructs_exactly():
    for whiten in ("true", "false"):
        lr, w, _, _ = run(f"lowrank{{mode=svd,rank=64,dtype=f32,whiten={whiten},damp=1e-6}}")
        assert isinstance(lr, LowRank) and lr.rank == 64 and lr.base is None
        assert torch.allclose(lr.decode(), w, atol=1e-4), whiten


def test_whitened_truncation_beats_plain_svd_on_output_error():
    plain = out_err(*run("lowrank{mode=svd,rank=16,whiten=false}")[:3])
    white = out_err(*run("lowrank{mode=svd,rank=16}")[:3])
    assert white < 0.7 * plain


def test_rank_by_energy_and_budget():
    lr, _, _, _ = run("lowrank{mode=svd,energy=0.5,whiten=false}")
    full, w, _, _ = run("lowrank{mode=svd,rank=64,whiten=false,dtype=f32}")
    s = torch.linalg.svdvals(w.double())
    e = s.pow(2).cumsum(0) / s.pow(2).sum()
    assert lr.rank == int((e < 0.5).sum()) + 1
    lr, _, _, _ = run("lowrank{mode=svd,bpw=1.0,whiten=false}")
    assert lr.rank == (64 * 128) // (16 * (64 + 128))


def test_correction_of_int3_residual(tmp_path):
    q, w, x, _ = run("quant{bits=3,group=64}")
    lr, w, x, model = run("quant{bits=3,group=64},lowrank{rank=8},entropy")
    inner = lr.inner()
    assert isinstance(inner, LowRank) and isinstance(inner.base, Quantized) and "int3 g64 + r8" in lr.describe()
    assert out_err(lr, w, x) < 0.8 * out_err(q, w, x)
    write_container(model, tmp_path / "m.cllm")
    assert torch.equal(read_container(tmp_path / "m.cllm").tensors[NAME].rep.decode(), lr.decode())


def test_needs_a_rank():
    from cllm_compiler.errors import PassError
    with pytest.raises(PassError, match="rank="):
        run("lowrank{mode=svd}")
