import json

import numpy as np
import pytest
import torch

from cllm_compiler.errors import LoadError, UnsupportedModelError
from cllm_compiler.loading import load_model
from tests.conftest import make_hf_dir


def _hf_state(path):
    from safetensors.torch import load_file
    sd = {}
    for f in sorted(path.glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def test_hf_dir_streams_exact_tensors(tiny_dir):
    m = load_model(tiny_dir)
    sd = _hf_state(tiny_dir)
    assert set(m.tensors) == set(sd)
    for node in m:
        assert node.rep.kind == "dense" and node.rep._data is None  # lazy: nothing read yet
        assert torch.equal(node.rep.decode(), sd[node.name].float())
    assert m.config.arch == "llama" and m.config.num_kv_heads == 2
    assert m.tokenizer is not None and m.source["sha256"]
    assert m.num_params == sum(v.numel() for v in sd.values())


def test_sharded_tied_bf16(tmp_path):
    d = make_hf_dir(tmp_path / "sharded", tie=True, shards=3, dtype=torch.bfloat16)
    assert (d / "model.safetensors.index.json").exists()
    m = load_model(d)
    assert "lm_head.weight" not in m.tensors and m.config.tie_word_embeddings
    assert m.tensors["model.embed_tokens.weight"].rep.dtype == "bf16"
    sd = _hf_state(d)
    assert all(torch.equal(n.rep.decode(), sd[n.name].float()) for n in m)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_other_llama_family_archs(tmp_path, arch):
    m = load_model(make_hf_dir(tmp_path / arch, arch=arch))
    assert m.config.arch == arch
    if arch == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in m.tensors
        assert m.tensors["model.layers.0.self_attn.q_proj.bias"].role == "bias"


def test_unsupported_architecture_is_named(tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError) as e:
        load_model(d)
    assert "GPT2LMHeadModel" in e.value.format()


def test_corrupt_safetensors(tmp_path, tiny_dir):
    import shutil
    d = tmp_path / "bad"
    shutil.copytree(tiny_dir, d)
    f = d / "model.safetensors"
    f.write_bytes(b"\xff" * 64 + f.read_bytes()[64:200])
    with pytest.raises(LoadError, match="model.safetensors"):
        load_model(d)


def write_tiny_gguf(hf_dir, path, quant_linear=True):
    import gguf
    from cllm_compiler.backends.gguf_writer import gguf_name, permute
    cfg = json.loads((hf_dir / "config.json").read_text())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    expected = {}
    for name, t in _hf_state(hf_dir).items():
        gname = gguf_name(name)
        arr = t.float().numpy()
        if "q_proj" in name or "k_proj" in name:
            arr = permute(t.float(), cfg["num_attention_heads"] if "q_proj" in name else cfg["num_key_value_heads"]).numpy()
        if quant_linear and arr.ndim == 2 and "embed" not in name:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            deq = torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0))
            if "q_proj" in name or "k_proj" in name:
                from cllm_compiler.load_gguf import unpermute
                deq = unpermute(deq, cfg["num_attention_heads"] if "q_proj" in name else cfg["num_key_value_heads"])
            expected[name] = deq
        else:
            w.add_tensor(gname, np.ascontiguousarray(arr))
            expected[name] = t.float()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def test_gguf_unpermutes_and_dequantizes(tmp_path, tiny_dir):
    path = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(tiny_dir, path)
    m = load_model(path)
    assert m.config.num_layers == 2 and m.config.num_kv_heads == 2 and not m.config.tie_word_embeddings
    assert set(m.tensors) == set(expected)
    sd = _hf_state(tiny_dir)
    for n in m:
        got = n.rep.decode()
        assert torch.equal(got, expected[n.name]), n.name
        assert torch.allclose(got, sd[n.name], atol=2e-3)  # Q8_0 of the same weights, in HF row order


def test_gguf_corrupt_and_unsupported(tmp_path, tiny_dir):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(tiny_dir, path, quant_linear=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(path.read_bytes()[:300])
    with pytest.raises(LoadError):
        load_model(bad)
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="falcon"):
        load_model(tmp_path / "falcon.gguf")


def test_missing_path_and_unknown_file(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\x80\x04not a model")
    with pytest.raises(LoadError, match="neither"):
        load_model(f)


def test_row_reads_match_full_reads(tmp_path, tiny_dir):
    """Passes read big tensors by row ranges; those must equal slices of the full tensor."""
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(tiny_dir, path)
    for m in (load_model(tiny_dir), load_model(path)):
        for node in m:
            if len(node.shape) != 2:
                continue
            full = node.rep.decode()
            for a, b in ((0, 3), (5, 17), (node.shape[0] - 2, node.shape[0] + 5)):
                assert torch.equal(node.rep.rows(a, b), full[a:b]), node.name
