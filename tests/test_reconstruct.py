"""Block-wise compression-aware training (`reconstruct`, training/blockwise.py, blocktrain.py)."""
from __future__ import annotations

import json

import pytest
import torch

from cllm_compiler.errors import PassError
from cllm_compiler.passes.gptq import UniformGrid, gptq
from cllm_compiler.passes.quant import quantize_rtn
from cllm_compiler.training.blocktrain import block_loss, train_block
from cllm_compiler.training.blockwise import BlockConfig, FrozenCodes, quantizer_for, start_latent, to_quantized


def _layer_problem(seed: int = 0, rows: int = 48, cols: int = 192):
    """One linear with correlated inputs (where GPTQ's error feedback matters), 40 sequences."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    mix = torch.randn(cols, cols, generator=g) * 0.3 + torch.eye(cols)
    x = torch.randn(40, 32, cols, generator=g) @ mix
    return w, x, x @ w.T


def _gptq(w: torch.Tensor, x: torch.Tensor, bits: int = 3, group: int = 64, zero: str = "int"):
    flat = x.reshape(-1, x.shape[-1])
    start = quantize_rtn(w, bits, group, zero == "sym", "int" if zero == "sym" else zero)
    grid = UniformGrid(w.shape[0], w.shape[1], bits, group, zero == "sym", "int" if zero == "sym" else zero, start)
    return start, grid.build(gptq(w, flat.T @ flat, grid, act_order=True))


@pytest.mark.parametrize("zero", ["int", "sym", "float"])
def test_formats_decode_exactly_what_training_computed(zero):
    """Both modes start on the stored grid bit for bit and read back records whose decode is the
    trained forward bit for bit (max |delta| = 0), for int zero points, symmetric and float mins."""
    w, _, _ = _layer_problem()
    rep = quantize_rtn(w, 4, 64, zero == "sym", "int" if zero == "sym" else zero)
    frozen = FrozenCodes(rep)
    assert torch.equal(frozen(), rep.decode())
    wq = quantizer_for(rep)
    latent = start_latent(rep, w)
    assert torch.equal(wq(latent), rep.decode())
    with torch.no_grad():  # as if trained: scales and mins moved, latents moved
        frozen.log_scale.add_(0.013)
        for p in wq.parameters():
            p.add_(0.021)
        latent = latent + 0.3 * torch.randn_like(latent) * latent.abs().mean()
    assert torch.equal(frozen.record().decode(), frozen())
    assert torch.equal(to_quantized(wq, latent).decode(), wq(latent))


def test_block_training_beats_gptq_on_a_layer_with_correlated_inputs():
    """Issue 19: starting from GPTQ's codes, training the grid lowers the held-out output error
    below GPTQ's (which is itself below RTN's); the records kept decode to the trained layer."""
    w, x, y = _layer_problem()
    rtn, rep = _gptq(w, x)
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    held = slice(32, 40)
    losses = {}
    for name, r in (("rtn", rtn), ("gptq", rep)):
        with torch.no_grad():
            lin.weight.copy_(r.decode())
        losses[name] = block_loss(lin, x[held], y[held])
    keep, _, res = train_block(lin, lin, {"w": lin}, {"w": rep}, {"w": w}, {}, x, y,
                               BlockConfig(steps=150, batch=4, holdout=8, lr_scale=3e-3))
    assert losses["gptq"] < 0.8 * losses["rtn"], losses
    assert res.trained and res.loss_before == pytest.approx(losses["gptq"])
    assert res.loss_after < 0.99 * losses["gptq"], (res, losses)  # measured 0.977x: GPTQ is near-optimal for one layer
    assert torch.equal(lin.weight, keep["w"].decode())
    assert block_loss(lin, x[held], y[held]) == pytest.approx(res.loss_after)


def test_training_that_does_not_help_keeps_the_starting_block():
    """A learning rate that wrecks the grid: the held-out check keeps GPTQ's records unchanged."""
    w, x, y = _layer_problem(1)
    _, rep = _gptq(w, x)
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    keep, _, res = train_block(lin, lin, {"w": lin}, {"w": rep}, {"w": w}, {}, x, y,
                               BlockConfig(steps=20, batch=4, holdout=8, lr_scale=1.0))
    assert not res.trained and keep["w"] is rep
    assert torch.equal(lin.weight, rep.decode())


@pytest.mark.slow  # a compile with training (~10 s): the default suite keeps under 10 minutes
def test_reconstruct_pass_in_a_compile(tiny_dir, tmp_path):
    """`quant,reconstruct,entropy` on a tiny Llama: trained layers' records are stored (scales
    differ from RTN's, codes the same with codes=keep) and the same flags give the same bytes."""
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.container import read_container
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    base = "quant{bits=3,group=64},quant{bits=8,match=embed|lm_head}"
    rec = "reconstruct{tokens=1536,seqlen=128,steps=12,batch=2,holdout=2,lr_scale=0.003}"
    outs = {}
    for name, pipe in (("rtn", f"{base},entropy"), ("rec", f"{base},{rec},entropy"), ("rec2", f"{base},{rec},entropy")):
        outs[name] = tmp_path / name
        compile_model(tiny_dir, get_target("x86-avx2"), parse_pipeline(pipe), outs[name], eval_windows=1, seqlen=128,
                      lower=False)
    a, b = read_container(outs["rtn"] / "model.cllm"), read_container(outs["rec"] / "model.cllm")
    name = "model.layers.0.mlp.down_proj.weight"
    qa, qb = a.tensors[name].rep.inner(), b.tensors[name].rep.inner()
    assert (qa.codes == qb.codes).all() and not (qa.scales == qb.scales).all()
    assert (outs["rec"] / "model.cllm").read_bytes() == (outs["rec2"] / "model.cllm").read_bytes()
    rep = json.loads((outs["rec"] / "report.json").read_text())
    assert any("layers improved on held-out" in n for n in rep["notes"])


def test_reconstruct_refuses_too_little_text_before_work(tiny_dir, tmp_path):
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    with pytest.raises(PassError, match="holdout"):
        compile_model(tiny_dir, get_target("x86-avx2"), parse_pipeline("quant{bits=4},reconstruct{tokens=256,seqlen=128}"),
                      tmp_path / "a", eval_windows=0, lower=False)
    assert not (tmp_path / "a").exists()


def test_resume_by_layer_gives_the_same_bytes(tiny_dir, tmp_path, monkeypatch):
    """A compile killed after layer 0 resumes from resume=DIR: only layer 1 trains, and the
    artifact is byte for byte the uninterrupted one; the folder resumed with other settings is
    refused before any work, its files untouched."""
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.passes import reconstruct
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    real, calls = reconstruct.train_block, []

    def counting(*a, **kw):
        calls.append(1)
        if kill_at is not None and len(calls) > kill_at:
            raise RuntimeError("killed")
        return real(*a, **kw)
    monkeypatch.setattr(reconstruct, "train_block", counting)
    pipe = "quant{bits=3,group=64},reconstruct{tokens=1024,seqlen=128,steps=6,resume=%s},entropy"

    def run(out: str, folder: str, steps: int = 6):
        compile_model(tiny_dir, get_target("x86-avx2"), parse_pipeline((pipe % folder).replace("steps=6", f"steps={steps}")),
                      tmp_path / out, eval_windows=0, lower=False)
    kill_at = None
    run("whole", tmp_path / "r1")
    kill_at, calls[:] = 1, []
    with pytest.raises(RuntimeError, match="killed"):
        run("part", tmp_path / "r2")
    assert not (tmp_path / "part").exists() and sorted(p.name for p in (tmp_path / "r2").iterdir()) == ["layer000.safetensors"]
    kill_at, calls[:] = None, []
    run("part", tmp_path / "r2")
    assert len(calls) == 1  # layer 0 came from the resume folder
    assert (tmp_path / "part" / "model.cllm").read_bytes() == (tmp_path / "whole" / "model.cllm").read_bytes()
    calls[:] = []
    before = {p.name: p.read_bytes() for p in (tmp_path / "r2").iterdir()}
    with pytest.raises(PassError, match="other pass settings"):  # resumed with other settings: refused before work
        run("other", tmp_path / "r2", steps=7)
    assert calls == [] and not (tmp_path / "other").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "r2").iterdir()} == before


@pytest.mark.slow  # a compile with training (~10 s): the default suite keeps under 10 minutes
def test_a_damaged_resume_file_is_refused(tiny_dir, tmp_path):
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    from safetensors.torch import load_file, save_file
    pipe = parse_pipeline(f"quant{{bits=3,group=64}},reconstruct{{tokens=1024,seqlen=128,steps=2,resume={tmp_path / 'r'}}}")
    compile_model(tiny_dir, get_target("x86-avx2"), pipe, tmp_path / "a", eval_windows=0, lower=False)
    f = tmp_path / "r" / "layer001.safetensors"
    from safetensors import safe_open
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    t = load_file(f)
    name = next(k for k in t if k.endswith("::codes"))
    t[name] = t[name][:, :-1].contiguous()  # the wrong shape, under the right key
    save_file(t, str(f), metadata=meta)
    pipe = parse_pipeline(f"quant{{bits=3,group=64}},reconstruct{{tokens=1024,seqlen=128,steps=2,resume={tmp_path / 'r'}}}")
    with pytest.raises(PassError, match="does not fit this model"):
        compile_model(tiny_dir, get_target("x86-avx2"), pipe, tmp_path / "b", eval_windows=0, lower=False)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow  # a compile with training (~10 s): the default suite keeps under 10 minutes
def test_budget_then_reconstruct_keeps_the_file_size(tiny_dir, tmp_path):
    """`allocate` simulates candidates without training (reconstruct keeps codes and sizes), and
    the trained artifact still meets the budget the allocator planned for."""
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    pipe = ("calibrate{tokens=1024,seqlen=128},allocate{budget=4,choices=bits=3|4|5},gptq{match=linear|embed|lm_head},"
            "quant{match=embed|lm_head},reconstruct{tokens=1024,seqlen=128,steps=4},entropy")
    compile_model(tiny_dir, get_target("x86-avx2"), parse_pipeline(pipe), tmp_path / "a", eval_windows=0, lower=False)
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    planned = float(next(n for n in rep["notes"] if n.startswith("allocated")).split("predicted ")[1].split()[0])
    assert abs(rep["bits_per_weight"] - planned) < 0.02 and rep["bits_per_weight"] <= 4.0 + 0.02, (rep["bits_per_weight"], planned)
    assert any("layers improved on held-out" in n for n in rep["notes"])


def test_cli_training_flags_insert_the_passes_before_entropy():
    from cllm_compiler.cli.compile import with_training
    from cllm_compiler.pipeline import parse_pipeline
    names = [p.name for p in with_training(parse_pipeline("calibrate,gptq{bits=3},quant{bits=8,match=embed},entropy"), True)]
    assert names == ["calibrate", "gptq", "quant", "reconstruct", "entropy"]
    both = with_training(parse_pipeline("calibrate,gptq{bits=3},entropy"), True, True)
    assert [p.name for p in both] == ["calibrate", "gptq", "reconstruct", "distill", "entropy"]
    again = with_training(parse_pipeline("quant{bits=4},reconstruct{steps=5}"), True, True)
    assert [p.name for p in again] == ["quant", "reconstruct", "distill"] and again[1].args["steps"] == 5
