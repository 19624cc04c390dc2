"""cllm-decode: safetensors and GGUF outputs equal the IR's decoded tensors bit for bit."""
import pytest
import torch

from cllm_compiler.cli.decode import main as decode_main
from cllm_compiler.compiler import compile_model
from cllm_compiler.loading import load_model
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import get_target

GGUF_PIPE = ("quant{bits=4,group=32,zero=float,match=mlp},quant{bits=4,group=32,sym=true,match=attn},"
             "quant{bits=8,group=32,sym=true,match=embed},entropy{codec=auto}")


def test_safetensors_is_bit_exact_and_loads_in_transformers(tiny_artifact, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from cllm_compiler.backends.torch_ref import build_torch_model
    out = tmp_path / "hf"
    assert decode_main([str(tiny_artifact), "--to", "safetensors", "-o", str(out)]) == 0
    ir = load_model(tiny_artifact)
    sd = load_file(out / "model.safetensors")
    assert set(sd) == set(ir.tensors)
    for n in ir:
        assert torch.equal(sd[n.name], n.rep.decode()), n.name
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.arange(40)[None] % 500
    with torch.no_grad():
        assert torch.equal(hf(x).logits, build_torch_model(ir)(x).logits)
    assert load_model(out).tokenizer.tokenizer_json == ir.tokenizer.tokenizer_json


def test_gguf_exact_types_round_trip(tiny_dir, tmp_path, capsys):
    import gguf
    art = tmp_path / "art"
    compile_model(tiny_dir, get_target("gguf-cpu"), parse_pipeline(GGUF_PIPE), art)
    out = tmp_path / "m.gguf"
    assert decode_main([str(art), "--to", "gguf", "-o", str(out)]) == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.ffn_up.weight"] == "Q4_1" and types["blk.0.attn_q.weight"] == "Q4_0"
    assert types["token_embd.weight"] == "Q8_0" and types["output.weight"] == "F32"
    assert "note:" not in capsys.readouterr().err  # every tensor had an exact GGUF type
    ir, back = load_model(art), load_model(out)
    assert set(back.tensors) == set(ir.tensors)
    for n in ir:
        assert torch.equal(back.tensors[n.name].rep.decode(), n.rep.decode()), n.name


def test_gguf_inexact_tensors_are_reported(tiny_artifact, tmp_path, capsys):
    import gguf
    out = tmp_path / "m.gguf"
    assert decode_main([str(tiny_artifact), "--to", "gguf", "--inexact", "f16", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "int4 g64" in err and "written as F16, extra MSE" in err
    assert decode_main([str(tiny_artifact), "--to", "gguf", "-o", str(out)]) == 2  # exists, no --force
    # default: re-quantized per tensor to a GGUF type no larger than the tensor's own bits
    assert decode_main([str(tiny_artifact), "--to", "gguf", "-o", str(out), "--force"]) == 0
    err = capsys.readouterr().err
    assert "re-quantized to" in err and "SQNR" in err
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] not in ("F32", "F16")
