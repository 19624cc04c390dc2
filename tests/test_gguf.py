"""GGUF backend: exact types bit for bit, ggml's K/i-quants, llama.cpp agreeing with the torch
reference, decode == compile-time bytes, and bad input refused before anything is written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cllm_compiler.backends.gguf_writer import write_gguf
from cllm_compiler.compiler import compile_model
from cllm_compiler.errors import BackendError, PassError
from cllm_compiler.ir import LINEAR_ROLES
from cllm_compiler.loading import load_model
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import get_target

EXACT = {  # pipeline for the linears -> the GGUF type it must become
    "quant{bits=4,group=32,sym=true}": "Q4_0",
    "quant{bits=4,group=32,zero=float}": "Q4_1",
    "quant{bits=5,group=32,sym=true}": "Q5_0",
    "quant{bits=5,group=32,zero=float}": "Q5_1",
    "quant{bits=8,group=32,sym=true}": "Q8_0",
    "ggml{type=Q2_K}": "Q2_K", "ggml{type=Q3_K}": "Q3_K", "ggml{type=Q4_K}": "Q4_K",
    "ggml{type=Q5_K}": "Q5_K", "ggml{type=Q6_K}": "Q6_K", "ggml{type=IQ4_XS}": "IQ4_XS",
    "ggml{type=IQ4_NL}": "IQ4_NL", "cast{dtype=f16}": "F16", "cast{dtype=bf16}": "BF16",
}


def _compile(src: Path, out: Path, pipe: str, eval_windows: int = 0):
    return compile_model(src, get_target("gguf-cpu"), parse_pipeline(pipe), out, eval_windows=eval_windows,
                         seqlen=128)


def _gguf_tensors(path: Path) -> dict:
    import gguf
    from cllm_compiler.load_gguf import hf_name
    return {hf_name(t.name): t for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("pipe,kind", list(EXACT.items()), ids=list(EXACT.values()))
def test_exact_types_are_bit_exact(tiny_dir, tmp_path, pipe, kind):
    """Dequantizing cllm's GGUF tensors with gguf-py gives the IR's decoded tensors exactly."""
    from gguf.quants import dequantize

    from cllm_compiler.load_gguf import unpermute
    res = _compile(tiny_dir, tmp_path / "a", f"{pipe},entropy")
    assert res.report["lowering"]["notes"] == []  # nothing inexact
    ir = load_model(tmp_path / "a")
    cfg = ir.config
    checked = 0
    for name, t in _gguf_tensors(tmp_path / "a" / "model.gguf").items():
        node = ir.tensors[name]
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(node.shape)
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            w = unpermute(w, cfg.num_heads if "q_proj" in name else cfg.num_kv_heads)
        if node.role in LINEAR_ROLES:
            assert t.tensor_type.name == kind, name
            checked += 1
        assert torch.equal(w, node.rep.decode()), name
    assert checked == 14  # 2 layers x 7 linears


def test_llama_cpp_matches_torch_on_f32(tiny_dir, tmp_path):
    """The cross-backend check: same weights, llama.cpp vs the torch reference runner."""
    res = _compile(tiny_dir, tmp_path / "a", "cast{dtype=f32}", eval_windows=2)
    b = res.report["eval"]["backends"]["llama.cpp"]
    x = b["vs_torch_same_weights"]
    assert x["top1_agree"] == 1.0 and x["kld_mean"] < 1e-6
    assert abs(b["ppl"] / res.report["eval"]["compressed"]["ppl"] - 1) < 1e-4
    assert b["speed"]["decode_tok_s"] > 0 and b["speed"]["prefill_tok_s"] > 0


def test_llama_cpp_runs_k_quants_close_to_torch(tiny_dir, tmp_path):
    """llama.cpp multiplies K-quant weights with 8-bit-quantized activations; the torch
    runner uses float activations, so a small KLD remains (SmolLM2 Q4_K: 0.005)."""
    res = _compile(tiny_dir, tmp_path / "a", "ggml{type=Q4_K},entropy", eval_windows=1)
    x = res.report["eval"]["backends"]["llama.cpp"]["vs_torch_same_weights"]
    assert x["kld_mean"] < 0.02 and x["top1_agree"] > 0.9


def test_decode_to_gguf_equals_compile_output(tiny_dir, tmp_path):
    from cllm_compiler.cli.decode import main as decode_main
    pipe = "quant{bits=3,group=64,match=attn},ggml{type=Q3_K,match=mlp},quant{bits=5,group=32,zero=float,match=embed},entropy"
    _compile(tiny_dir, tmp_path / "a", pipe)
    assert decode_main([str(tmp_path / "a"), "--to", "gguf", "-o", str(tmp_path / "d.gguf")]) == 0
    assert (tmp_path / "d.gguf").read_bytes() == (tmp_path / "a" / "model.gguf").read_bytes()


def test_requant_picks_least_error_within_bits(tiny_dir, tmp_path):
    """A codebook tensor (no GGUF type) becomes the best GGUF type no larger than its bits."""
    res = _compile(tiny_dir, tmp_path / "a", "codebook{bits=3,scope=row,match=mlp},quant{bits=8,group=32,sym=true,match=attn|embed|lm_head},entropy")
    notes = res.report["lowering"]["notes"]
    assert len(notes) == 6 and all("re-quantized to" in n for n in notes)  # 2 layers x gate/up/down
    ir = load_model(tmp_path / "a")
    for name, t in _gguf_tensors(tmp_path / "a" / "model.gguf").items():
        if ir.tensors[name].role.startswith("mlp"):
            bits = 8 * t.n_bytes / t.n_elements
            assert bits <= 3.6, (name, t.tensor_type.name)


def test_generates_text_from_a_fresh_process(tiny_dir, tmp_path):
    _compile(tiny_dir, tmp_path / "a", "quant{bits=8,group=32,sym=true},entropy")
    out = subprocess.run([sys.executable, "-m", "cllm_compiler.cli.run", str(tmp_path / "a"), "--prompt", "The",
                          "-n", "8"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "llama.cpp" in out.stderr and len(out.stdout.strip()) > 0


def test_tokenizer_and_chat_template_survive(tiny_dir, tmp_path):
    import gguf
    _compile(tiny_dir, tmp_path / "a", "cast{dtype=f16}")
    r = gguf.GGUFReader(str(tmp_path / "a" / "model.gguf"))
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # plain byte-level BPE
    from cllm_compiler.backends.gguf_run import LlamaCppModel
    ir = load_model(tmp_path / "a")
    text = "The tower is 324 metres tall, the tallest structure in Paris."
    lc = LlamaCppModel(tmp_path / "a" / "model.gguf", n_ctx=128)
    assert lc.tokenize(text) == ir.tokenizer.load().encode(text).ids
    lc.close()


# ---- bad input: a clear error, and nothing written ----

def test_vocab_mismatch_refused_before_writing(tiny_dir, tmp_path):
    import dataclasses
    m = load_model(tiny_dir)
    m.config = dataclasses.replace(m.config, vocab_size=100)  # fewer embedding rows than tokens
    with pytest.raises(BackendError, match="tokenizer has 512 tokens but the embedding has 100"):
        write_gguf(m, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_architecture_and_tensor_refused(tiny_dir, tmp_path):
    m = load_model(tiny_dir)
    object.__setattr__(m.config, "arch", "gpt_neox")  # bypass the IR's own check: the backend must refuse too
    with pytest.raises(BackendError, match="gpt_neox"):
        write_gguf(m, tmp_path / "x.gguf")
    m = load_model(tiny_dir)
    node = next(iter(m))
    m.tensors["model.vision.proj.weight"] = type(node)("model.vision.proj.weight", node.shape, node.rep, "linear")
    with pytest.raises(BackendError, match="model.vision.proj.weight"):
        write_gguf(m, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_rows_not_whole_blocks():
    from cllm_compiler.backends.gguf_types import requant
    from cllm_compiler.ir import TensorNode
    from cllm_compiler.passes.ggml import GGMLPass
    from cllm_compiler.passes_base import PassStats
    from cllm_compiler.reprs import Dense
    w = torch.randn(64, 48)  # 48 columns: no 32- or 256-block type fits
    node = TensorNode("model.layers.0.mlp.up_proj.weight", (64, 48), Dense((64, 48), data=w))
    for fallback in ("error", "llama"):
        with pytest.raises(PassError, match="not whole Q4_K blocks"):
            GGMLPass(type="Q4_K", fallback=fallback).apply(node, PassStats("t"))
    with pytest.raises(BackendError, match="no GGUF block type fits rows of 48"):
        requant(w, 4.0)


def test_budget_chooses_gguf_types_for_the_gguf_file(tiny_dir, tmp_path):
    """--budget on a GGUF target: the allocator's per-tensor ggml types fill the *GGUF file*'s
    budget (header, tokenizer and alignment counted), mixing types."""
    import gguf

    from cllm_compiler.cli.compile import main
    out = tmp_path / "a"
    assert main([str(tiny_dir), "-t", "gguf-cpu", "--budget", "4.5", "-o", str(out), "--eval-windows", "0"]) == 0
    g = out / "model.gguf"
    bpw = g.stat().st_size * 8 / load_model(out).num_params
    assert 4.4 <= bpw <= 4.5, bpw
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(g)).tensors if len(t.shape) == 2}
    assert len(types) >= 2, types


def test_run_cli_torch_runner_and_errors(tiny_artifact, capsys):
    from cllm_compiler.cli.run import main as run_main
    assert run_main([str(tiny_artifact), "--prompt", "The", "-n", "8", "--runner", "torch"]) == 0
    torch_run = capsys.readouterr()
    assert "runner: torch reference" in torch_run.err
    assert run_main([str(tiny_artifact), "--prompt", "The", "-n", "8"]) == 0  # x86 artifact: its TVM package
    tvm_run = capsys.readouterr()
    assert "runner: TVM" in tvm_run.err and tvm_run.out == torch_run.out  # same greedy text
    assert run_main([str(tiny_artifact), "--prompt", "The", "--runner", "llama.cpp"]) == 2
    assert "has no model.gguf" in capsys.readouterr().err
    assert run_main([str(tiny_artifact), "--chat", "hi"]) == 2  # the tiny tokenizer has no chat template
    assert "no chat template" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_other_llama_family_archs_run_in_llama_cpp(tmp_path, arch):
    """Mistral is written as llama.cpp's llama (q/k permuted); Qwen2 as qwen2 (biases, no permutation)."""
    from tests.conftest import make_hf_dir
    src = make_hf_dir(tmp_path / arch, arch=arch, seed=3)
    res = _compile(src, tmp_path / "a", "cast{dtype=f32}", eval_windows=1)
    x = res.report["eval"]["backends"]["llama.cpp"]["vs_torch_same_weights"]
    assert x["top1_agree"] == 1.0 and x["kld_mean"] < 1e-5, x


def test_budget_skips_types_that_do_not_fit_a_tensor(tmp_path):
    """Rows of 96 weights hold no 256-block K-quant: on those tensors the allocator chooses among the
    32-block types only (no silent substitute), while 256-wide down_proj may take K-quants."""
    import json as _json

    import gguf
    import transformers

    from cllm_compiler.cli.compile import main
    from tests.conftest import train_tokenizer
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=256)
    src = tmp_path / "m"
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    train_tokenizer().save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(_json.dumps({"add_bos_token": False}))
    out = tmp_path / "a"
    from cllm_compiler.cli.compile import GGUF_FAST_TYPES
    pipe = (f"calibrate{{tokens=2048,seqlen=128}},allocate{{budget=5.0,rate=gguf,choices=type={GGUF_FAST_TYPES}}},"
            "ggml{fallback=error},entropy")
    assert main([str(src), "-t", "gguf-cpu", "-p", pipe, "-o", str(out), "--eval-windows", "0"]) == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}
    narrow = {v for k, v in types.items() if k.endswith(("attn_q.weight", "ffn_up.weight", "token_embd.weight"))}
    assert narrow <= {"Q4_0", "IQ4_NL", "Q8_0"}, narrow
    assert (out / "model.gguf").stat().st_size * 8 / load_model(out).num_params <= 5.0
