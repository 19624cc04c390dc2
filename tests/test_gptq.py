"""gptq: error feedback beats RTN on correlated inputs; the result decodes onto the same grid."""
from __future__ import annotations

import pytest
import torch

from cllm_compiler.calibration import Calibration
from cllm_compiler.ir import Model, ModelConfig, TensorNode
from cllm_compiler.passes_base import PassContext
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.reprs import Dense, Quantized

NAME = "model.layers.0.mlp.down_proj.weight"


def layer(rows=64, cols=256, tokens=2048, seed=0):
    """A linear whose inputs are strongly correlated (low-rank mixing plus outlier channels)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    z = torch.randn(tokens, 32, generator=g)
    x = z @ torch.randn(32, cols, generator=g) + 0.1 * torch.randn(tokens, cols, generator=g)
    x[:, :8] *= 10  # a few loud channels, as in real LLM activations
    cfg = ModelConfig("llama", 8, cols, rows, 1, 1, 1, cols)
    model = Model(cfg, None)
    model.add(TensorNode(NAME, (rows, cols), Dense((rows, cols), data=w)))
    cal = Calibration({}, {NAME: x.T @ x}, {NAME: x.abs().mean(0)}, tokens)
    return model, cal, w, x


def run(spec, model, cal):
    ctx = PassContext(calib=cal)
    stats = PassManager(parse_pipeline(spec), ctx=ctx).run(model)
    return model.tensors[NAME].rep, stats


def out_err(rep, w, x):
    return float((x @ (rep.decode() - w).T).pow(2).sum())


@pytest.mark.parametrize("bits,spec", [(4, ""), (3, ""), (3, ",act_order=true"), (4, ",static=true"),
                                       (3, ",group=channel"), (3, ",sym=true"), (4, ",zero=float")])
def test_gptq_beats_rtn_on_output_error(bits, spec):
    extra = spec.replace("act_order=true", "").replace("static=true", "").strip(",")
    rtn, _ = run(f"quant{{bits={bits},group=64{',' + extra if extra else ''}}}", *layer()[:2])
    model, cal, w, x = layer()
    q, stats = run(f"gptq{{bits={bits},group=64{spec}}}", model, cal)
    assert isinstance(q, Quantized) and q.bits == bits
    e_rtn, e_gptq = out_err(rtn, w, x), out_err(q, w, x)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    t = stats[0].tensors[0]
    assert t.out_mse == pytest.approx(e_gptq / (x.shape[0] * w.shape[0]), rel=1e-3)


def test_gptq_refines_an_existing_grid_keeping_scales():
    model, cal, w, x = layer()
    q0, _ = run("quant{bits=3,group=32}", layer()[0], cal)
    q1, _ = run("quant{bits=3,group=32},gptq", model, cal)
    assert (q1.scales == q0.scales).all() and (q1.zeros == q0.zeros).all()
    assert out_err(q1, w, x) < out_err(q0, w, x)


def test_identity_hessian_gives_rtn():
    """With uncorrelated unit inputs GPTQ has nothing to exploit: it must equal RTN."""
    model, _, w, _ = layer(cols=64)
    cal = Calibration({}, {NAME: torch.eye(64) * 100}, {NAME: torch.ones(64)}, 100)
    q, _ = run("gptq{bits=4,group=32,static=true,damp=1e-6,search=false}", model, cal)
    rtn, _ = run("quant{bits=4,group=32}", layer(cols=64)[0], cal)
    assert (q.codes == rtn.codes).mean() > 0.999


def test_requires_calibration():
    from cllm_compiler.errors import PassError
    with pytest.raises(PassError, match="requires calibrated"):
        parse_pipeline("gptq") and PassManager(parse_pipeline("gptq"))
