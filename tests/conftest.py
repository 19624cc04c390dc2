"""Tiny Llama-family models built in code, so unit tests run in seconds on one thread."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# TVM decode kernels exact (fp32 activations) unless a test asks for int8/VNNI: most tests compare
# token-for-token with the torch reference on tiny random models, whose logits are nearly flat.
os.environ.setdefault("CLLM_DECODE_ACTIVATIONS", "f32")
# Triton kernels run in Triton's interpreter on CPU tensors (no GPU here); it must be chosen before
# any kernel is defined. CLLM_TEST_CUDA=1 runs the same tests compiled, on a GPU (tensors on cuda).
if os.environ.get("CLLM_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

def x86_params(names: tuple[str, ...] = ("x86-avx2", "x86-avx512")) -> list:
    """Test params for native x86 code: one per ISA, each skipped (naming the flags) on a host
    that lacks them. The AVX2 path runs on every AVX2 host, AVX-512 ones included."""
    from cllm_compiler.targets import get_target
    from cllm_compiler.targets.host import host_flags, missing_flags
    flags = host_flags()
    out = []
    for name in names:
        lacks = missing_flags(get_target(name), flags)
        out.append(pytest.param(name, id=name, marks=pytest.mark.skipif(
            bool(lacks), reason=f"{name} code needs CPU flags this host lacks: {', '.join(lacks)}")))
    return out


def host_target_name() -> str:
    """The x86 target this host runs (x86-avx512 or x86-avx2): what executes here is built for it."""
    from cllm_compiler.targets.host import pick_host_target
    return pick_host_target().target.name


TINY = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0)


def train_tokenizer(vocab: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from cllm_compiler.evaluate import wikitext_text
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # Train on the first 40 kB only: enough for a 512-token vocab, fast.
    tok.train_from_iterator([wikitext_text()[:40000]], trainer)
    return tok


def make_hf_dir(path: Path, arch: str = "llama", seed: int = 0, tie: bool = False, shards: int = 1,
                dtype: torch.dtype = torch.float32) -> Path:
    import transformers
    torch.manual_seed(seed)
    cfg_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[arch]
    cfg = cfg_cls(**TINY, tie_word_embeddings=tie)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(dtype)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size="600KB" if shards > 1 else "2GB")
    train_tokenizer().save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_hf_dir(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_tied_dir(tmp_path_factory) -> Path:
    return make_hf_dir(tmp_path_factory.mktemp("tiny") / "tied", tie=True, seed=1)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_dir, tmp_path_factory) -> Path:
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    out = tmp_path_factory.mktemp("art") / "a"
    compile_model(tiny_dir, get_target("host"),
                  parse_pipeline("quant{bits=4,group=64},quant{bits=8,group=128,match=embed|lm_head},"
                                 "entropy{codec=zstd}"), out, eval_windows=1, seqlen=256)
    return out
