"""codebook: k-means beats uniform at equal bits on Laplacian data; VQ; round trip; GPTQ on LUTs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cllm_compiler.container import read_container, write_container
from cllm_compiler.ir import Model, ModelConfig, TensorNode
from cllm_compiler.passes_base import PassContext
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.reprs import Dense, Encoded
from cllm_compiler.reprs_codebook import Codebook
from tests.test_gptq import NAME, layer, out_err

ROWS, COLS = 64, 512


def laplace_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(ROWS, COLS, generator=g, dtype=torch.float64) - 0.5
    w = (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()  # Laplace(0, 1) by inversion
    cfg = ModelConfig("llama", 8, COLS, ROWS, 1, 1, 1, COLS)
    m = Model(cfg, None)
    m.add(TensorNode(NAME, (ROWS, COLS), Dense((ROWS, COLS), data=w)))
    return m, w


def compress(spec, model=None, cal=None):
    model = model or laplace_model()[0]
    stats = PassManager(parse_pipeline(spec), ctx=PassContext(calib=cal)).run(model)
    return model.tensors[NAME].rep, stats, model


def sqnr(w, rep):
    return 10 * np.log10(float(w.pow(2).sum() / (rep.decode() - w).pow(2).sum()))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_codebook_beats_uniform_on_laplacian(bits):
    w = laplace_model()[1]
    uni, _, _ = compress(f"quant{{bits={bits},group=channel}}")
    row, _, _ = compress(f"codebook{{bits={bits},scope=row}}")
    ten, _, _ = compress(f"codebook{{bits={bits},scope=tensor,group=128}}")
    assert sqnr(w, row) >= sqnr(w, uni) + 0.5  # Lloyd-Max beats uniform on a peaked density
    assert sqnr(w, ten) >= sqnr(w, uni)
    assert isinstance(row, Codebook) and row.nominal_bpw == bits and row.luts.shape == (1, ROWS, 1 << bits, 1)


@pytest.mark.parametrize("bits,d,stages,kb", [(2.0, 4, 1, 8), (2.5, 2, 1, 5), (2.0, 8, 2, 8), (2.25, 8, 3, 6)])
def test_vector_codebooks_fractional_bits(bits, d, stages, kb):
    w = laplace_model()[1]
    cb, stats, model = compress(f"codebook{{bits={bits},d={d},stages={stages},scope=tensor,group=128}}")
    assert (cb.d, cb.stages, cb.kbits) == (d, stages, kb) and cb.nominal_bpw == bits
    # the stored bytes: codes + LUT + scales, nothing hidden
    expect = (stages * ROWS * COLS // d * kb + 7) // 8 + stages * (1 << kb) * d * 2 + ROWS * (COLS // 128) * 2
    assert cb.storage_bits() == 8 * expect
    assert sqnr(w, cb) > 3.0
    assert stats[0].tensors[0].sqnr_db == pytest.approx(sqnr(w, cb), abs=0.01)


def test_residual_stage_improves():
    w = laplace_model()[1]
    one, _, _ = compress("codebook{bits=1,d=8,stages=1,scope=tensor}")
    two, _, _ = compress("codebook{bits=2,d=8,stages=2,scope=tensor}")
    assert sqnr(w, two) > sqnr(w, one) + 1.0


def test_container_round_trip_and_rans(tmp_path):
    cb, _, model = compress("codebook{bits=3,scope=row},entropy{codec=rans}")
    assert isinstance(cb, Encoded) and "lut 3b row" in cb.describe()
    dense = cb.decode()
    write_container(model, tmp_path / "m.cllm")
    back = read_container(tmp_path / "m.cllm").tensors[NAME].rep
    assert torch.equal(back.decode(), dense)
    assert cb.entropy_bits() is not None and cb.entropy_bits() <= 3.0


def test_weighting_and_gptq_on_codebook_reduce_output_error():
    model, cal, w, x = layer(cols=256)
    plain, _, _ = compress("codebook{bits=3,weighted=false}", model, cal)
    model, cal, w, x = layer(cols=256)
    weighted, _, _ = compress("codebook{bits=3}", model, cal)
    model, cal, w, x = layer(cols=256)
    fed, _, _ = compress("codebook{bits=3},gptq", model, cal)
    assert isinstance(fed, Codebook) and np.array_equal(fed.luts, weighted.luts)
    assert out_err(weighted, w, x) < out_err(plain, w, x)
    assert out_err(fed, w, x) < 0.8 * out_err(weighted, w, x)


def test_bad_parameters_are_clear():
    from cllm_compiler.errors import PassError
    with pytest.raises(PassError, match="12-bit indices"):
        compress("codebook{bits=3,d=4,scope=tensor}")
    with pytest.raises(PassError, match="not reachable"):
        compress("codebook{bits=2.25,d=4,stages=2,scope=tensor}")
    with pytest.raises(PassError, match="scalar and single-stage"):
        compress("codebook{bits=2,d=2}")


def _two_layer_model():
    g = torch.Generator().manual_seed(3)
    cfg = ModelConfig("llama", 8, COLS, ROWS, 2, 1, 1, COLS)
    m = Model(cfg, None)
    for i in range(2):
        name = f"model.layers.{i}.mlp.down_proj.weight"
        w = torch.randn(ROWS, COLS, generator=g)
        m.add(TensorNode(name, (ROWS, COLS), Dense((ROWS, COLS), data=w)))
    return m


def test_shared_codebook_is_stored_once(tmp_path):
    sizes = {}
    for share in ("none", "role"):
        m = _two_layer_model()
        PassManager(parse_pipeline(f"codebook{{bits=2,d=4,scope=tensor,share={share}}},entropy")).run(m)
        reps = [n.rep for n in m]
        luts = [r.payload["lut"].data for r in reps]
        assert (luts[0] == luts[1]) == (share == "role")
        sizes[share] = write_container(m, tmp_path / f"{share}.cllm")
        back = read_container(tmp_path / f"{share}.cllm")
        for n in m:
            assert torch.equal(back.tensors[n.name].rep.decode(), n.rep.decode())
    lut_bytes = len(luts[0])
    assert lut_bytes > 1000  # 256 x 4 fp16 entries, coded
    assert sizes["role"] <= sizes["none"] - lut_bytes + 200  # the shared LUT is on disk once


def test_shared_extent_with_different_hashes_is_rejected(tmp_path):
    from cllm_compiler.errors import ContainerError
    from tests.containers import forge
    m = _two_layer_model()
    PassManager(parse_pipeline("codebook{bits=2,d=4,scope=tensor,share=role},entropy")).run(m)
    write_container(m, tmp_path / "m.cllm")

    def bad(h):
        b0 = h["tensors"][0]["buffers"]
        b1 = h["tensors"][1]["buffers"]
        lut0 = next(b for b in b0 if b["name"] == "lut")
        codes1 = next(b for b in b1 if b["name"] == "codes")
        codes1.update(offset=lut0["offset"], length=lut0["length"])
    (tmp_path / "bad.cllm").write_bytes(forge((tmp_path / "m.cllm").read_bytes(), bad))
    with pytest.raises(ContainerError, match="shared with different hashes"):
        read_container(tmp_path / "bad.cllm")
