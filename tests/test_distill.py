"""End-to-end distillation (`distill`, training/distill.py): KL on logits from the float model,
training the stored grids' scales/mins and the norms."""
from __future__ import annotations

import json

import pytest
import torch

from cllm_compiler.errors import PassError
from cllm_compiler.training.distill import sparse_kl

BASE = "quant{bits=3,group=64},quant{bits=8,match=embed|lm_head}"


def test_sparse_kl_is_the_kl_of_the_coarsened_distributions():
    """With k = vocabulary it is the full KL; with k < vocabulary it is the KL between the
    distributions over the teacher's top-k plus one bucket (never more than the full KL)."""
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(3, 5, 40, generator=g) * 2, torch.randn(3, 5, 40, generator=g) * 2
    lt, ls = t.log_softmax(-1), s.log_softmax(-1)
    full = (lt.exp() * (lt - ls)).sum(-1).mean()
    v, i = lt.topk(40, -1)
    assert float(sparse_kl(s, i, v)) == pytest.approx(float(full), rel=1e-4, abs=1e-6)
    v, i = lt.topk(8, -1)
    pt, ps = v.exp(), ls.gather(-1, i).exp()
    rt, rs = 1 - pt.sum(-1), 1 - ps.sum(-1)
    coarse = ((pt * (pt / ps).log()).sum(-1) + rt * (rt / rs).log()).mean()
    assert float(sparse_kl(s, i, v)) == pytest.approx(float(coarse), rel=1e-4)
    assert float(coarse) <= float(full) + 1e-6
    assert float(sparse_kl(t, i, v)) == pytest.approx(0.0, abs=1e-5)


def test_distill_lowers_heldout_kl_and_the_artifact_computes_what_training_did(tiny_dir, tmp_path, monkeypatch):
    """Issue 19: on a tiny Llama at 3 bits, distillation lowers the held-out KL to the float
    model; the compiled artifact's logits equal the trained model's (max |delta| <= 1e-5); codes
    stay, scales move; the same flags give the same bytes."""
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.container import read_container
    from cllm_compiler.passes import distill
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    seen: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    real = distill.heldout_kl

    def spy(net, ids, t):
        kl = real(net, ids, t)
        with torch.no_grad():
            seen.append((ids.clone(), net(ids).logits.clone(), kl))
        return kl
    monkeypatch.setattr(distill, "heldout_kl", spy)
    pipe = f"{BASE},distill{{tokens=2560,seqlen=128,lr_scale=0.01,lr_norm=0.001,epochs=3,holdout=2}},entropy"
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        compile_model(tiny_dir, get_target("x86-avx2"), parse_pipeline(pipe), out, eval_windows=0, lower=False)
    (ids, logits, before), (_, trained, after) = seen[:2]
    assert after < 0.95 * before, (before, after)  # measured 0.00152 -> 0.00130
    art = read_container(outs[0] / "model.cllm")
    with torch.no_grad():
        got = build_torch_model(art)(ids).logits
    assert float((got - trained).abs().max()) <= 1e-5
    compile_model(tiny_dir, get_target("x86-avx2"), parse_pipeline(f"{BASE},entropy"), tmp_path / "q", eval_windows=0,
                  lower=False)
    q = read_container(tmp_path / "q" / "model.cllm")
    name = "model.layers.1.self_attn.o_proj.weight"
    qa, qb = q.tensors[name].rep.inner(), art.tensors[name].rep.inner()
    assert (qa.codes == qb.codes).all() and not (qa.scales == qb.scales).all()
    assert (outs[0] / "model.cllm").read_bytes() == (outs[1] / "model.cllm").read_bytes()
    rep = json.loads((outs[0] / "report.json").read_text())
    assert any(n.startswith("held-out KL") and "(kept)" in n for n in rep["notes"])


def test_distill_refuses_too_little_text_before_work(tiny_dir, tmp_path):
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    with pytest.raises(PassError, match="holdout"):
        compile_model(tiny_dir, get_target("x86-avx2"), parse_pipeline("quant{bits=4},distill{tokens=256,seqlen=128}"),
                      tmp_path / "a", eval_windows=0, lower=False)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("case", ["missing", "short", "wikitext"])
@pytest.mark.parametrize("pass_", ["distill{tokens=1024,seqlen=128,data=%s}", "reconstruct{tokens=1024,seqlen=128,data=%s}"])
def test_training_text_is_checked_before_any_work(tiny_dir, tmp_path, monkeypatch, case, pass_):
    """Issue 19's bad input: training text that is missing, too short or WikiText-2 test is
    refused with one error before any pass works (the quantizer never runs), nothing written."""
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.evaluate import wikitext_text
    from cllm_compiler.passes import quant
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    text = tmp_path / "t.txt"
    if case == "short":
        text.write_text("Call me Ishmael. Some years ago, never mind how long precisely. " * 8)
    elif case == "wikitext":
        text.write_text(wikitext_text()[:20000])
    ran = []
    monkeypatch.setattr(quant, "quantize_rtn", lambda *a, **k: ran.append(1))
    match = {"missing": "does not exist", "short": "fewer than tokens=1024", "wikitext": "WikiText"}[case]
    with pytest.raises(PassError, match=match):
        compile_model(tiny_dir, get_target("x86-avx2"), parse_pipeline(f"quant{{bits=4}},{pass_ % text}"),
                      tmp_path / "a", eval_windows=0, lower=False)
    assert ran == [] and not (tmp_path / "a").exists()


@pytest.mark.slow  # five tiny compiles with training and held-out scoring (~1 min)
def test_e1_bench_runs_resumes_and_reports(tiny_dir, tmp_path):
    """bench/e1.py end to end on a tiny model: budgeted post-training and trained rows, a fixed
    point, the table and the plot; a rerun recompiles nothing (resume by budget and method)."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "bench/e1.py"), "--smoke", "--model", str(tiny_dir), "--seqlen", "128",
           "--windows", "1", "--heldout-windows", "1", "--budgets", "4", "--methods", "gptq,block,block+e2e",
           "--fixed", "rtn-int4-g128", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "e1")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    rows = json.loads((tmp_path / "e1.json").read_text())["rows"]
    assert set(rows) == {"b4-gptq", "b4-block", "b4-block+e2e", "rtn-int4-g128"}
    assert rows["b4-block+e2e"]["tokens"]["distill"] == 6 * 128 and "reconstruct" in rows["b4-block"]["tokens"]
    assert abs(rows["b4-block"]["bytes"] - rows["b4-gptq"]["bytes"]) < 0.01 * rows["b4-gptq"]["bytes"]
    md = (tmp_path / "e1.md").read_text()
    assert "| 4 | block+e2e |" in md and (tmp_path / "e1.png").stat().st_size > 10_000
    stamp = (tmp_path / "e1.json").stat().st_mtime_ns
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    assert "e1: " not in out and (tmp_path / "e1.json").stat().st_mtime_ns == stamp
    other = subprocess.run([*cmd, "--windows", "2"], capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "holds rows measured with" in other.stderr
    assert (tmp_path / "e1.json").stat().st_mtime_ns == stamp  # rows of other settings never mixed in
