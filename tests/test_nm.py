"""nm: exact N:M counts, Wanda/SparseGPT beat magnitude on output error, composition with int4."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cllm_compiler.container import read_container, write_container
from cllm_compiler.passes_base import PassContext
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.reprs import Encoded, Quantized
from cllm_compiler.reprs_sparse import Sparse
from tests.test_gptq import NAME, layer, out_err


def prune(spec, cols=256):
    model, cal, w, x = layer(cols=cols)
    PassManager(parse_pipeline(spec), ctx=PassContext(calib=cal)).run(model)
    return model.tensors[NAME].rep, w, x, model


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_every_group_keeps_exactly_n(method, n, m):
    sp, w, _, _ = prune(f"nm{{n={n},m={m},method={method}}}")
    assert isinstance(sp, Sparse)
    dense = sp.decode()
    nz = (dense != 0).reshape(dense.shape[0], -1, m).sum(-1)
    assert (sp.mask.reshape(dense.shape[0], -1, m).sum(-1) == n).all()
    assert (nz <= n).all()
    if method != "sparsegpt":  # kept values are the original weights (f16)
        assert torch.equal(dense[torch.from_numpy(sp.mask)], w[torch.from_numpy(sp.mask)].half().float())


def test_unstructured_keeps_equal_count_per_row():
    for method in ("magnitude", "wanda", "sparsegpt"):
        sp, _, _, _ = prune(f"nm{{m=0,sparsity=0.6,method={method}}}")
        assert (sp.mask.sum(1) == 256 - round(256 * 0.6)).all(), method


def test_wanda_and_sparsegpt_beat_magnitude_on_output_error():
    errs = {meth: out_err(*prune(f"nm{{method={meth}}}")[:3]) for meth in ("magnitude", "wanda", "sparsegpt")}
    assert errs["wanda"] < errs["magnitude"]
    assert errs["sparsegpt"] < 0.8 * errs["wanda"], errs


def test_two_four_plus_int4_round_trips_through_the_container(tmp_path):
    sp, w, x, model = prune("nm{method=sparsegpt},quant{bits=4,group=64},entropy")
    assert isinstance(sp, Encoded) and sp.inner_kind == "sparse"
    inner = sp.inner()
    assert isinstance(inner.values, Quantized) and inner.values.codes.shape == (64, 128)
    assert sp.payload["mask"].codec == "nm-mask"  # <= log2(6) bits per 4 weights, then rANS
    assert len(sp.payload["mask"].data) * 8 <= 64 * 256 / 4 * np.log2(6) + 512
    assert "2:4 int4 g64" in sp.describe()
    write_container(model, tmp_path / "m.cllm")
    back = read_container(tmp_path / "m.cllm").tensors[NAME].rep
    assert torch.equal(back.decode(), sp.decode())



def test_joint_sparsegpt_quantization_compensates_both_errors():
    pruned_only = out_err(*prune("nm{method=sparsegpt}")[:3])
    rtn = out_err(*prune("nm{method=sparsegpt},quant{bits=4,group=64}")[:3])
    sp, w, x, _ = prune("nm{method=sparsegpt},quant{bits=4,group=64},gptq")
    assert isinstance(sp, Sparse) and isinstance(sp.values, Quantized)
    assert (sp.decode()[~torch.from_numpy(sp.mask)] == 0).all()
    joint = out_err(sp, w, x)
    assert joint < 0.7 * rtn and joint < 1.5 * pruned_only, (pruned_only, rtn, joint)


def test_needs_calibration_for_wanda():
    from cllm_compiler.errors import PassError
    from tests.test_gptq import run
    model, _, _, _ = layer()
    with pytest.raises(PassError, match="needs calibration"):
        PassManager(parse_pipeline("nm{method=wanda}")).run(model)
