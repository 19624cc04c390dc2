"""ONNX backend: MatMulNBits written from the IR's codes, run in onnxruntime against the torch
reference (prefill and KV-cache decode), the onnx-cpu compile path, and clear refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cllm_compiler.compiler import compile_model
from cllm_compiler.container import read_container
from cllm_compiler.errors import BackendError, TargetError
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import get_target


def _ir(tiny_dir, tmp_path, pipeline):
    compile_model(tiny_dir, get_target("host"), parse_pipeline(pipeline), tmp_path / "ir", lower=False)
    return read_container(tmp_path / "ir" / "model.cllm")


@pytest.mark.parametrize("pipeline", ["quant{bits=4,group=32},entropy{codec=rans}",
                                      "quant{bits=8,group=64,sym=true}",
                                      "quant{bits=2,group=16},quant{bits=4,group=32,match=embed}",
                                      "quant{bits=4,group=64},quant{bits=8,group=32,match=embed}"])
def test_onnxruntime_matches_torch_prefill_and_decode(tiny_dir, tmp_path, pipeline):
    import onnx

    from cllm_compiler.backends.onnx_export import export_onnx
    from cllm_compiler.backends.onnx_run import OrtModel
    from cllm_compiler.backends.torch_ref import build_torch_model
    model = _ir(tiny_dir, tmp_path, pipeline)
    forms = export_onnx(model, tmp_path / "o" / "model.onnx")
    c = model.config
    (tmp_path / "o" / "onnx.json").write_text(json.dumps({"file": "model.onnx", "layers": c.num_layers,
                                                          "kv_heads": c.num_kv_heads, "head_dim": c.head_dim}))
    graph = onnx.load(str(tmp_path / "o" / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == sum(v == "nbits" for v in forms.values()) >= 14
    gbq = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gbq) == (forms["model.embed_tokens.weight (lookup)"] == "gbq") == ("match=embed" in pipeline)
    assert not [i for i in graph.initializer if i.name.startswith("w") and i.name[1:].isdigit()
                and forms[list(forms)[int(i.name[1:])]] == "nbits"]  # no dense copy of a packed weight
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = build_torch_model(model)(ids).logits.numpy()
    ort = OrtModel(tmp_path / "o")
    logits, pk, pv = ort.run(ids[:, :8].numpy(), ort._empty(2), ort._empty(2))
    np.testing.assert_allclose(logits, ref[:, :8], atol=1e-4, rtol=1e-4)
    for p in range(8, 12):  # decode through the KV cache, batch 2
        logits, pk, pv = ort.run(ids[:, p:p + 1].numpy(), pk, pv)
        np.testing.assert_allclose(logits[:, 0], ref[:, p], atol=1e-4, rtol=1e-4)


def test_onnx_cpu_compile_validates_in_onnxruntime(tiny_dir, tmp_path):
    res = compile_model(tiny_dir, get_target("onnx-cpu"), parse_pipeline(get_target("onnx-cpu").default_pipeline),
                        tmp_path / "a", eval_windows=1, seqlen=128)
    low = res.report["lowering"]
    assert low["matmulnbits"] == 14 and low["dense"] == 1  # 2 layers x 7 linears; the f32 head stays dense
    onnx_dir = tmp_path / "a" / "onnx"
    assert low["bytes"] == sum((onnx_dir / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))
    b = res.report["eval"]["backends"]["onnxruntime"]
    assert b["vs_torch_same_weights"]["top1_agree"] == 1.0 and b["vs_torch_same_weights"]["kld_mean"] < 1e-6
    assert b["speed"]["decode_tok_s"] > 0


def test_onnx_refusals_name_the_tensor_and_write_nothing(tiny_dir, tmp_path):
    for pipe, match in [("quant{bits=3,group=32}", "int3 g32 does not map"),
                        ("quant{bits=4,group=32,zero=float}", "float mins")]:
        with pytest.raises(BackendError, match=f"model.layers.0.*{match}"):
            compile_model(tiny_dir, get_target("onnx-cpu"), parse_pipeline(pipe), tmp_path / "x")
        assert not (tmp_path / "x").exists()
    with pytest.raises(TargetError, match="sparse"):  # refused before any work
        compile_model(tiny_dir, get_target("onnx-cpu"), parse_pipeline("nm{n=2,m=4,method=magnitude}"), tmp_path / "x")


def test_codebooks_are_requantized_explicitly_with_their_error(tiny_dir, tmp_path):
    """ORT would fold a Gather(codebook)->MatMul into dense f32 at load: cllm re-quantizes each
    codebook weight to int4 g32 instead, reports the added error per tensor, and the ONNX file
    computes exactly that re-quantized model."""
    res = compile_model(tiny_dir, get_target("onnx-cpu"), parse_pipeline("codebook{bits=3,scope=row}"),
                        tmp_path / "a", eval_windows=1, seqlen=128)
    low = res.report["lowering"]
    assert len(low["requantized"]) == 14 and low["matmulnbits"] == 14
    assert all(0 < n["rel_mse"] < 0.05 and n["from"].startswith("lut 3b") for n in low["requantized"])
    b = res.report["eval"]["backends"]["onnxruntime"]
    assert b["vs_torch_same_weights"]["kld_mean"] > 1e-7  # not the codebook model: the re-quantized one


def test_tied_embedding_is_stored_once_and_gathered_quantized(tiny_tied_dir, tmp_path):
    """A tied head and its embedding share one copy of the codes: MatMulNBits reads them as
    [V, blocks, blob], GatherBlockQuantized through a Reshape to [V, H/2]."""
    import onnx

    from cllm_compiler.backends.onnx_run import OrtModel
    from cllm_compiler.backends.torch_ref import build_torch_model
    res = compile_model(tiny_tied_dir, get_target("onnx-cpu"),
                        parse_pipeline("quant{bits=4,group=32},quant{bits=4,group=32,match=embed}"), tmp_path / "a")
    assert res.report["lowering"]["embedding"] == "GatherBlockQuantized"
    graph = onnx.load(str(tmp_path / "a" / "onnx" / "model.onnx"), load_external_data=False).graph
    names = {i.name for i in graph.initializer}
    gbq = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    reshape = next(n for n in graph.node if n.output[0] == gbq.input[0])
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == graph.output[0].name
                or n.op_type == "MatMulNBits" and n.input[1] == reshape.input[0])
    assert reshape.op_type == "Reshape" and reshape.input[0] == head.input[1]  # the head's codes, read twice
    assert gbq.input[2] == head.input[2] and "embed_scales" not in names and "embed_q" not in names
    model = read_container(tmp_path / "a" / "model.cllm")
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = build_torch_model(model)(ids).logits.numpy()
    np.testing.assert_allclose(OrtModel(tmp_path / "a" / "onnx")(ids).logits.numpy(), ref, atol=1e-4, rtol=1e-4)


def test_onnx_package_is_deterministic(tiny_dir, tmp_path):
    import hashlib
    digests = []
    for i in range(2):
        compile_model(tiny_dir, get_target("onnx-cpu"), parse_pipeline("quant{bits=4,group=32}"), tmp_path / f"a{i}")
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (tmp_path / f"a{i}" / "onnx").iterdir()})
    assert digests[0] == digests[1] and len(digests[0]) == 3


@pytest.mark.parametrize("target", ["onnx-cpu", "h100"])
def test_cllm_compile_cli_prints_the_lowering_for_every_backend(tiny_dir, tmp_path, target, capsys):
    from cllm_compiler.cli.compile import main
    pipe = "codebook{bits=4,scope=row}" if target == "onnx-cpu" else "quant{bits=4,group=64}"
    assert main([str(tiny_dir), "-t", target, "-o", str(tmp_path / "a"), "-p", pipe, "--eval-windows", "0"]) == 0
    printed = capsys.readouterr().out
    assert ("MatMulNBits x14" in printed and "re-quantized to int4 g32" in printed) if target == "onnx-cpu" \
        else ("q4g64i x14" in printed and "sm_90 cubins" in printed)
