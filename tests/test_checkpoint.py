"""cllm-compile --checkpoint: the compiled (and trained) model as an HF folder + compression.json
that compiles back to the same codes and logits, that transformers loads, and that is refused
for grids it cannot rebuild exactly."""
from __future__ import annotations

import json

import pytest
import torch

from cllm_compiler.cli.compile import main
from cllm_compiler.loading import load_model

PIPE = ("calibrate{tokens=1024,seqlen=128},gptq{bits=3,group=64},quant{bits=4,group=64,zero=float,match=embed|lm_head},"
        "reconstruct{tokens=1024,seqlen=128,steps=2},entropy")


def test_checkpoint_round_trips_codes_and_logits(tiny_dir, tmp_path):
    art, ck = tmp_path / "a", tmp_path / "ck"
    assert main([str(tiny_dir), "-p", PIPE, "-o", str(art), "--no-lower", "--eval-windows", "0",
                 "--checkpoint", str(ck)]) == 0
    spec = json.loads((ck / "compression.json").read_text())["tensors"]
    assert {t["bits"] for n, t in spec.items() if "layers" in n} == {3} and "lm_head.weight" in spec
    assert spec["lm_head.weight"]["zero"] == "float"
    # compiled again with no lossy pass: the same codes, scales and logits as the trained artifact
    assert main([str(ck), "-p", "entropy", "-o", str(tmp_path / "b"), "--no-lower", "--eval-windows", "0"]) == 0
    a, b = load_model(art / "model.cllm"), load_model(tmp_path / "b" / "model.cllm")
    for name in spec:
        ra, rb = a.tensors[name].rep.inner(), b.tensors[name].rep.inner()
        assert (ra.codes == rb.codes).all() and (ra.scales == rb.scales).all(), name
    from cllm_compiler.backends.torch_ref import build_torch_model
    ids = torch.arange(40)[None] % a.config.vocab_size
    with torch.no_grad():
        la, lb = build_torch_model(a)(ids).logits, build_torch_model(b)(ids).logits
    assert torch.equal(la, lb)
    from transformers import AutoModelForCausalLM  # any HF tool reads the folder: the decoded weights
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32)(ids).logits
    assert (hf - la).abs().max() < 1e-4


def test_checkpoint_refuses_what_it_cannot_rebuild_and_an_existing_folder(tiny_dir, tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "mine.txt").write_text("not cllm's")
    args = [str(tiny_dir), "-p", "quant{bits=4,group=64},entropy", "-o", str(tmp_path / "a"), "--no-lower",
            "--eval-windows", "0", "--checkpoint", str(ck)]
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 2 and "cllm did not write" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and (ck / "mine.txt").read_text() == "not cllm's"  # before any work
    bad = [str(tiny_dir), "-p", "codebook{bits=3},entropy", "-o", str(tmp_path / "c"), "--no-lower",
           "--eval-windows", "0", "--checkpoint", str(tmp_path / "ck2")]
    assert main(bad) == 2 and "'codebook' leaves codebook tensors" in capsys.readouterr().err
    assert not (tmp_path / "ck2").exists() and not (tmp_path / "c").exists()
