"""Compression-aware training: STE gradients, the rate term against the rans coder, N:M masks,
and the central contract — an exported checkpoint compiles to an artifact whose logits equal
the trained model's fake-quantized logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cllm_compiler.training.fakequant import WeightQuantizer, nm_mask
from cllm_compiler.training.qat import QATConfig, kd_loss, latent, penalties, prepare, quantized_linears
from cllm_compiler.training.rate import hard_bits, soft_bits


def _tiny(tiny_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)


def test_ste_gradients_are_lsq():
    """d out / d w is the identity inside the grid and 0 where clipped; d out / d scale is LSQ's
    (round(x/s) - x/s) inside, the clip level outside, times its gradient scale."""
    torch.manual_seed(0)
    w = torch.randn(4, 32)
    wq = WeightQuantizer(w, (3,), group=16, sym=True)
    with torch.no_grad():
        wq.log_scales["3"].add_(np.log(0.5))  # halve the range so that some weights clip
    w = w.clone().requires_grad_(True)
    g = torch.randn(4, 32)
    (wq(w) * g).sum().backward()
    s = wq.scale(3).detach().half().float().repeat_interleave(16, 1)
    t = w.detach() / s
    inside = (torch.round(t) + 4 >= 0) & (torch.round(t) + 4 <= 7)
    assert (~inside).any() and inside.any()
    torch.testing.assert_close(w.grad, g * inside)
    lsq = torch.where(inside, torch.round(t) - t, torch.clamp(torch.round(t) + 4, 0, 7) - 4)
    expect = (g * lsq).view(4, 2, 16).sum(-1) / (16 * 7) ** 0.5
    # d/d log s = s * d/ds (the fp16 rounding passes the gradient through unchanged)
    torch.testing.assert_close(wq.log_scales["3"].grad, expect * wq.scale(3).detach(), rtol=1e-4, atol=1e-6)


def test_gradients_reach_every_latent_weight_and_scale(tiny_dir):
    model = _tiny(tiny_dir)
    qs = prepare(model, QATConfig(bits=(4, 3), group=32, nm=(2, 4), nm_match=("gate_proj",), rate_lambda=1.0))
    ids = torch.randint(0, 512, (2, 16))
    out = model(ids, labels=ids)
    pen = penalties(model, qs, QATConfig(rate_lambda=1.0, nm=(2, 4)))
    (out.loss + pen["rate_bits_per_weight"] + pen["sr_ste"]).backward()
    for name, lin in quantized_linears(model).items():
        assert latent(lin).grad is not None and latent(lin).grad.abs().sum() > 0, name
        assert qs[name].log_scales[str(qs[name].bits)].grad.abs().sum() > 0, name
    gate = latent(quantized_linears(model)["model.layers.0.mlp.gate_proj.weight"])
    pruned = ~nm_mask(gate, 2, 4)
    assert gate.grad[pruned].abs().sum() > 0  # SR-STE: pruned weights keep learning


def test_rate_term_matches_the_rans_coder():
    from cllm_compiler.codecs import BufferSpec
    from cllm_compiler.codecs.rans import RansCodec
    from cllm_compiler.packing import pack
    torch.manual_seed(0)
    w = torch.randn(256, 512) * torch.linspace(0.2, 2, 512)  # uneven ranges: a skewed code histogram
    wq = WeightQuantizer(w, (4,), group=128)
    codes = wq.parts(w)["codes"]
    data, meta = RansCodec().encode(pack(codes.to(torch.uint8).numpy(), 4), BufferSpec("codes", 4, codes.numel()))
    coded_bits = 8 * (len(data) + len(repr(meta)))  # payload plus its frequency table
    rate = hard_bits(codes, 4)
    assert rate < 4 * codes.numel() * 0.98  # the rate model sees the skew
    assert abs(rate - coded_bits) / coded_bits < 0.01, (rate, coded_bits)
    soft = soft_bits(wq, w, tau=0.05, sample=codes.numel()).item()
    assert abs(soft - rate) / rate < 0.02  # the differentiable surrogate converges to it


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(2, 5, 11)
    assert kd_loss(a, a).abs() < 1e-6
    assert kd_loss(a, a + torch.randn_like(a)) > 0.01


@pytest.mark.parametrize("cfg", [QATConfig(bits=(4,), group=32), QATConfig(bits=(3, 4), group=64, sym=True),
                                 QATConfig(bits=(5,), group=32, zero="float"),
                                 QATConfig(codebook={"bits": 4, "scope": "row"}, codebook_match=("gate_proj", "up_proj")),
                                 QATConfig(codebook={"bits": 6, "d": 2, "scope": "tensor", "group": 64}),
                                 QATConfig(bits=(3,), group=32, lowrank=8, rank_dropout=0.5, kv_bits=8),
                                 QATConfig(bits=(4,), group=32, nm=(2, 4), nm_match=("gate_proj", "up_proj"))])
def test_export_compiles_to_the_trained_logits(tiny_dir, tmp_path, cfg):
    """Train a few steps, export, cllm-compile (entropy only: nothing re-fitted), run the artifact's
    IR in the torch reference: the logits equal the fake-quantized model's (max |delta| <= 1e-5)."""
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.container import read_container
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.reprs import Quantized
    from cllm_compiler.reprs_sparse import Sparse
    from cllm_compiler.targets import get_target
    from cllm_compiler.training.export import export
    model = _tiny(tiny_dir)
    qs = prepare(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    bits = min(cfg.bits)
    for wq in qs.values():
        wq.bits = bits
    model.eval()  # rank dropout off: the exported model is the whole correction
    if cfg.kv_bits:  # the KV format is for the runtime, not the weights: compare weight-only logits
        model.set_attn_implementation("sdpa")
    with torch.no_grad():
        trained = model(ids).logits
    export(model, qs, tmp_path / "exp", bits=bits, source=tiny_dir)
    compile_model(tmp_path / "exp", get_target("host"), parse_pipeline("quant{bits=8},entropy{codec=rans}"),
                  tmp_path / "art", lower=False)
    ir = read_container(tmp_path / "art" / "model.cllm")
    from cllm_compiler.reprs_codebook import Codebook
    from cllm_compiler.reprs_lowrank import LowRank
    from cllm_compiler.training.fakecodebook import CodebookQuantizer
    for node in ir:
        if node.name in qs:
            rep = node.rep.inner() if node.rep.kind == "encoded" else node.rep
            if isinstance(qs[node.name], CodebookQuantizer):
                assert isinstance(rep, Codebook) and rep.kbits == cfg.codebook["bits"], node.name
                continue
            if cfg.lowrank:
                assert isinstance(rep, LowRank) and rep.rank == 8 and isinstance(rep.base, Quantized), node.name
                continue
            assert isinstance(rep, Sparse if qs[node.name].nm else Quantized), node.name
            q = rep.values if isinstance(rep, Sparse) else rep
            assert q.bits == bits  # the trained bit-width, not the pipeline's quant{bits=8}
            if isinstance(rep, Sparse):  # N:M holds exactly
                assert (rep.mask.reshape(rep.mask.shape[0], -1, 4).sum(-1) == 2).all()
    with torch.no_grad():
        compiled = build_torch_model(ir)(ids).logits
    delta = (compiled - trained).abs().max().item()
    print(f"max |delta| {delta:.3g}")
    assert delta <= 1e-5


def _recipe(tmp_path, tiny_dir, **extra) -> "Path":
    import yaml
    r = {"model": str(tiny_dir), "steps": 4, "batch": 2, "seq_len": 32, "ckpt_every": 2, "log_every": 1,
         "eval_batches": 2, "qat": {"bits": [4, 3], "group": 32, "rate_lambda": 0.01, "kd_weight": 1.0,
                                    "ce_weight": 0.1, "nm": [2, 4], "nm_match": ["up_proj"]}} | extra
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def test_cllm_train_resumes_exactly_and_exports(tiny_dir, tmp_path, capsys):
    """4 steps in one go == 2 steps, stop, resume, 2 more (same weights, bit for bit); the export
    compiles with the trained formats, and held-out numbers are printed per bit-width."""
    from cllm_compiler.cli.train import main
    rec = _recipe(tmp_path, tiny_dir)
    assert main([str(rec), "-o", str(tmp_path / "a")]) == 0
    assert main([str(rec), "-o", str(tmp_path / "b"), "--stop-at", "2"]) == 0
    assert not (tmp_path / "b" / "export").exists()
    assert main([str(rec), "-o", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    printed = capsys.readouterr().out
    assert '"heldout_ppl"' in printed and '"bits": 3' in printed and '"tokens_per_s"' in printed
    import json
    spec = json.loads((tmp_path / "a" / "export" / "compression.json").read_text())
    assert {t["bits"] for t in spec["tensors"].values()} == {4}
    assert sum(t["nm"] is not None for t in spec["tensors"].values()) == 2  # the two up_proj layers


def test_cllm_train_refuses_bad_recipes_clearly(tiny_dir, tmp_path, capsys):
    from cllm_compiler.cli.train import main
    assert main([str(_recipe(tmp_path, tiny_dir, stepz=3)), "-o", str(tmp_path / "x")]) == 2
    assert "unknown recipe key 'stepz'" in capsys.readouterr().err
    assert main([str(_recipe(tmp_path, tiny_dir, qat={"bits": [9]})), "-o", str(tmp_path / "x")]) == 2
    assert "between 2 and 8" in capsys.readouterr().err
    wiki = tmp_path / "wiki.txt"
    from cllm_compiler.evaluate import wikitext_text
    wiki.write_text(wikitext_text()[:20000])
    assert main([str(_recipe(tmp_path, tiny_dir, data=[str(wiki)])), "-o", str(tmp_path / "x")]) == 2
    assert "WikiText-2 test" in capsys.readouterr().err


def test_cllm_train_set_overrides_one_qat_key(tiny_dir, tmp_path):
    """--set qat.bits=[...] keeps the other qat keys (tuples among the defaults) and takes effect."""
    from cllm_compiler.cli.train import main
    rec = _recipe(tmp_path, tiny_dir)
    assert main([str(rec), "-o", str(tmp_path / "a"), "--steps", "1", "--set", "qat.bits=[3,5]",
                 "--set", "export_bits=5"]) == 0
    import json
    spec = json.loads((tmp_path / "a" / "export" / "compression.json").read_text())
    assert {t["bits"] for t in spec["tensors"].values()} == {5}
    assert sum(t["nm"] is not None for t in spec["tensors"].values()) == 2  # the recipe's nm_match kept


def _train_and_export(tiny_dir, out, cfg, steps: int = 3):
    from cllm_compiler.training.export import export
    model = _tiny(tiny_dir)
    qs = prepare(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    export(model, qs, out, source=tiny_dir)
    lins = quantized_linears(model)
    with torch.no_grad():
        return {name: lin.weight.detach().clone() for name, lin in lins.items()}


@pytest.mark.parametrize("cfg,kind", [(QATConfig(bits=(4,), group=32, sym=True), "Q4_0"),
                                      (QATConfig(bits=(4,), group=32, zero="float"), "Q4_1"),
                                      (QATConfig(bits=(8,), group=32, sym=True), "Q8_0")])
def test_gguf_export_of_a_qat_model_is_exact(tiny_dir, tmp_path, cfg, kind):
    """Trained on llama.cpp's own block grid, the model's GGUF holds exactly its trained weights."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from cllm_compiler.compiler import compile_model
    from cllm_compiler.load_gguf import unpermute
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    trained = _train_and_export(tiny_dir, tmp_path / "exp", cfg)
    res = compile_model(tmp_path / "exp", get_target("gguf-cpu"), parse_pipeline("entropy"), tmp_path / "art")
    assert res.report["lowering"]["notes"] == []  # nothing re-quantized
    from cllm_compiler.load_gguf import hf_name
    tensors = {hf_name(t.name): t for t in GGUFReader(str(tmp_path / "art" / "model.gguf")).tensors}
    for name, w in trained.items():
        t = tensors[name]
        assert t.tensor_type.name == kind, name
        got = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(w.shape)
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            got = unpermute(got, 4 if "q_proj" in name else 2)
        assert torch.equal(got, w), name


def test_kv_cache_fake_quant_blocks_and_gradient():
    from cllm_compiler.training.kvquant import kv_fake_quant
    x = torch.randn(2, 3, 5, 64, requires_grad=True)
    q = kv_fake_quant(x, 4, 32)
    blocks = q.detach().reshape(-1, 32)
    scale = x.detach().reshape(-1, 32).abs().amax(-1, keepdim=True) / 7
    levels = blocks / scale.half().float()
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 7
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # STE (no value clips: the scale is the absmax)


def test_training_with_kv_cache_quantization_changes_attention(tiny_dir):
    m = _tiny(tiny_dir)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = m(ids).logits
    prepare(m, QATConfig(bits=(8,), group=32, kv_bits=4))
    with torch.no_grad():
        kvq = m(ids).logits
    assert m.config._attn_implementation == "cllm_kvq" and 1e-4 < (kvq - plain).abs().max() < 1.0


@pytest.mark.slow  # ~20 s: the default suite keeps under 10 minutes
def test_e1_experiment_script_runs_end_to_end_in_smoke_mode(tiny_dir, tmp_path):
    """bench/qat_e1.py needs a GPU for real runs; its whole flow (PTQ baselines, cllm-train, export,
    compile, scoring at equal bytes) runs here on the tiny model in ~30 s."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench" / "qat_e1.py"), "--smoke", "--model", str(tiny_dir),
                        "--bits", "3", "--out", str(tmp_path / "e1")], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "e1.json").read_text())["rows"]
    assert [x["method"] for x in rows] == ["float (reference)", "RTN", "GPTQ", "LUT/row", "QAT+KD (cllm-train)"]
    assert all(x["bpw"] > 3 for x in rows[1:]) and rows[0]["kld"] == 0.0
