"""calibrate: layer-by-layer statistics equal a direct computation; cache reuse; clear errors."""
from __future__ import annotations

import pytest
import torch

from cllm_compiler import layerwise
from cllm_compiler.backends.torch_ref import build_torch_model
from cllm_compiler.calibration import FILE, Calibration
from cllm_compiler.errors import PassError
from cllm_compiler.loading import load_model
from cllm_compiler.passes.calibrate import DEFAULT_TEXT
from cllm_compiler.passes_base import PassContext
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.passes.calibrate import calibration_text, sample

CAL = "calibrate{tokens=512,seqlen=128}"


def calibrated(model, tmp_path=None, spec=CAL):
    ctx = PassContext(workdir=tmp_path)
    PassManager(parse_pipeline(spec), ctx=ctx).run(model)
    return ctx


def test_layerwise_matches_full_model(tiny_dir):
    model = load_model(tiny_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 64))
    seen: list[str] = []
    hidden = layerwise.run(model, ids, lambda n, x: seen.append(n))
    ours = layerwise.logits(model, hidden)
    with torch.inference_mode():
        ref = build_torch_model(model)(ids).logits
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
    assert seen[0] == "model.layers.0.self_attn.q_proj.weight" and seen[-1] == "lm_head.weight"
    assert len(seen) == 7 * model.config.num_layers + 1


def test_hessian_equals_direct_inputs(tiny_dir):
    model = load_model(tiny_dir)
    ctx = calibrated(model)
    cal = ctx.calib
    # recompute the input of layer 1's down_proj with a forward hook on the full HF model
    text, _ = calibration_text("")
    ids = torch.tensor(model.tokenizer.load().encode(text).ids)
    batch = sample(ids, 512, 128)
    net = build_torch_model(model)
    xs = []
    h = net.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.inference_mode():
        net(batch)
    h.remove()
    x = torch.cat(xs)
    name = "model.layers.1.mlp.down_proj.weight"
    assert cal.tokens == 512
    # each sequence's first token (the attention sink) weighs `sink` in H
    from cllm_compiler.passes.calibrate import sink_weights
    wx = x * sink_weights(128).repeat(4)[:, None]
    assert torch.allclose(cal.H(name), wx.T @ x, rtol=1e-3, atol=1e-3 * float((wx.T @ x).abs().max()))
    assert torch.allclose(cal.mean_abs(name), x.abs().mean(0), rtol=1e-4, atol=1e-6)
    # k/v share q's input; up shares gate's
    assert cal.H("model.layers.0.self_attn.v_proj.weight") is cal.H("model.layers.0.self_attn.q_proj.weight")
    # output error identity: tr(D H D^T) = sum_t w_t ||D x_t||^2 (the sink token weighted)
    d = torch.randn(model.tensors[name].shape)
    expect = float(((x @ d.T).pow(2).sum(1) * sink_weights(128).repeat(4)).sum())
    assert cal.output_sq_error(name, d) == pytest.approx(expect, rel=1e-3)


def test_cache_is_written_and_reused(tiny_dir, tmp_path):
    model = load_model(tiny_dir)
    ctx = calibrated(model, tmp_path)
    assert (tmp_path / FILE).is_file()
    again = calibrated(model, spec=CAL[:-1] + f",cache={tmp_path}}}")
    assert torch.equal(again.calib.H("lm_head.weight"), ctx.calib.H("lm_head.weight"))
    # a different token count must not reuse the cache
    assert Calibration.load(tmp_path / FILE, {**ctx.calib.key, "tokens": 1024}) is None
    (tmp_path / FILE).write_bytes(b"garbage")  # a damaged cache is recomputed, not trusted
    assert Calibration.load(tmp_path / FILE, ctx.calib.key) is None


def test_tied_embedding_uses_lm_head_statistics(tiny_tied_dir):
    model = load_model(tiny_tied_dir)
    cal = calibrated(model).calib
    assert cal.H("model.embed_tokens.weight") is cal.H("lm_head.weight")


def test_refuses_wikitext_and_missing_files(tiny_dir, tmp_path):
    from cllm_compiler.evaluate import wikitext_text
    wt = tmp_path / "wt.txt"
    wt.write_text(wikitext_text()[:5000])
    model = load_model(tiny_dir)
    with pytest.raises(PassError, match="WikiText"):
        calibrated(model, spec=f"calibrate{{data={wt}}}")
    with pytest.raises(PassError, match="does not exist"):
        calibrated(model, spec=f"calibrate{{data={tmp_path / 'nope.txt'}}}")


def test_packaged_texts_differ_and_neither_is_wikitext():
    """Both packaged texts load, are different text, and pass the WikiText-2 guard."""
    from cllm_compiler.eval_guard import refuse_eval_text
    from cllm_compiler.passes.calibrate import calibration_text
    (moby, h1), (mix, h2) = calibration_text("moby-dick"), calibration_text("mix")
    assert h1 != h2 and len(mix) > 500_000 and "Fellow-Citizens" in mix and "Ishmael" in moby
    for text, name in ((moby, "moby-dick"), (mix, "mix")):
        refuse_eval_text(text, name, PassError, use="calibrate")  # raises on WikiText-2 test text
    assert calibration_text("")[1] == calibration_text(DEFAULT_TEXT)[1]
