"""Triton backend on a machine without a GPU: every kernel against the IR's decode under Triton's
interpreter (odd sizes, ragged groups, K splits), every kernel compiled ahead of time for sm_80,
sm_87 and sm_90, and the GPU runtime (interpreted) against the torch reference model."""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined: CPU tensors, no GPU

import numpy as np
import pytest
import torch

from cllm_compiler.backends.nvml_energy import EnergyMeter
from cllm_compiler.backends.triton_layout import lower_weight, pack_words
from cllm_compiler.backends.triton_ops import matmul
from cllm_compiler.errors import BackendError
from cllm_compiler.reprs import Dense, Quantized
from cllm_compiler.reprs_codebook import Codebook
from cllm_compiler.reprs_lowrank import LowRank
from cllm_compiler.reprs_sparse import Sparse

RNG = np.random.default_rng(0)
DEV = "cuda" if os.environ.get("CLLM_TEST_CUDA") == "1" else "cpu"  # the same tests, compiled, on a GPU
N, K = 67, 200  # odd outputs, K not a multiple of any tile or of group 64: tails everywhere


def _quant(n: int, k: int, bits: int, group: int, zero: str) -> Quantized:
    ng = -(-k // group)
    codes = RNG.integers(0, 1 << bits, (n, k)).astype(np.uint8)
    scales = (RNG.random((n, ng)) * 0.1 + 0.01).astype(np.float16)
    zeros = RNG.integers(0, 1 << bits, (n, ng)).astype(np.uint8) if zero == "int" else None
    mins = (RNG.standard_normal((n, ng)) * 0.1).astype(np.float16) if zero == "float" else None
    return Quantized(codes, scales, zeros, bits, group, mins)


def _codebook(n: int, k: int, bits: int, nlut: int, group: int, d: int = 1, stages: int = 1) -> Codebook:
    codes = RNG.integers(0, 1 << bits, (stages, n, k // d)).astype(np.uint8)
    luts = RNG.standard_normal((stages, nlut, 1 << bits, d)).astype(np.float16)
    scales = (RNG.random((n, -(-k // group))) + 0.5).astype(np.float16) if group else None
    return Codebook(codes, luts, scales, group)


def _sparse(n: int, k: int, keep: int, m: int, values: str) -> Sparse:
    score = RNG.random((n, k // m, m))
    mask = np.zeros_like(score, dtype=bool)
    np.put_along_axis(mask, np.argsort(score, -1)[..., :keep], True, -1)
    kept = k * keep // m
    vals = (_quant(n, kept, 4, 32, "sym") if values == "q4" else
            Dense((n, kept), "f16", data=torch.randn(n, kept).half()))
    return Sparse(mask.reshape(n, k), vals, keep, m)


def _check(rep, m: int, shape=(N, K), split: int | None = None, dtype=torch.float32, rtol: float = 1e-5) -> None:
    g = lower_weight(rep, shape, "t.weight").to(DEV)
    x = torch.randn(m, shape[1]).to(dtype)
    y = matmul(x.to(DEV), g, split=split).cpu()
    ref = (x.double() @ rep.decode().double().T)
    scale = ref.abs().max().item()
    err = (y.double() - ref).abs().max().item()
    assert y.shape == (m, shape[0]) and y.dtype == dtype
    assert err <= rtol * scale * 10 + 1e-6, f"max |err| {err:.3g} vs max |y| {scale:.3g}"


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("zero", ["sym", "int", "float"])
@pytest.mark.parametrize("m", [1, 3, 20])
def test_quant_kernel_matches_decode(bits, zero, m):
    _check(_quant(N, K, bits, 64 if bits != 3 else 32, zero), m)


@pytest.mark.parametrize("bits,nlut,group", [(4, 1, 0), (4, N, 64), (8, 1, 32), (8, N, 0)])
@pytest.mark.parametrize("m", [1, 17])
def test_scalar_codebook_kernel_matches_decode(bits, nlut, group, m):
    _check(_codebook(N, K, bits, nlut, group), m)


@pytest.mark.parametrize("d,bits,stages,nlut,group", [(2, 8, 1, 1, 0), (4, 4, 2, 1, 40), (2, 4, 1, N, 0)])
@pytest.mark.parametrize("m", [1, 16])
def test_vector_codebook_kernel_matches_decode(d, bits, stages, nlut, group, m):
    _check(_codebook(N, K, bits, nlut, group, d, stages), m)


@pytest.mark.parametrize("keep,mm,values", [(2, 4, "f16"), (2, 4, "q4"), (4, 8, "f16")])
@pytest.mark.parametrize("m", [1, 5, 32])
def test_nm_sparse_kernel_matches_decode(keep, mm, values, m):
    _check(_sparse(N, K, keep, mm, values), m)


@pytest.mark.parametrize("m,split", [(1, 1), (1, 3), (16, 2)])
def test_lowrank_epilogue_and_k_splits(m, split):
    base = _quant(N, K, 3, 32, "int")
    rep = LowRank(torch.randn(N, 5) * 0.1, torch.randn(5, K) * 0.1, base)
    g = lower_weight(rep, (N, K), "t.weight")
    assert g.spec.rank == 5 and g.spec.kind == "quant"
    _check(rep, m, split=split, rtol=1e-3)  # factors are f16: the reference decodes the same f16 values


def test_dense_and_fp16_activations():
    w = Dense((N, K), "f16", data=torch.randn(N, K).half())
    _check(w, 2)
    _check(_quant(N, K, 4, 64, "sym"), 16, dtype=torch.float16, rtol=2e-3)


def test_packing_is_coalesced_and_exact():
    codes = RNG.integers(0, 8, (5, 23)).astype(np.uint8)
    words = pack_words(codes, 3).numpy().view(np.uint32)
    assert words.shape == (3, 5)  # K-major: the words of consecutive outputs are adjacent
    back = (words[np.arange(23) // 10] >> (3 * (np.arange(23) % 10))[:, None]) & 7
    np.testing.assert_array_equal(back.T, codes)


def test_unstructured_sparsity_refused_with_tensor_name():
    mask = np.ones((4, 8), dtype=bool)
    mask[0, :2] = False
    mask[1:, 6:] = False
    rep = Sparse(mask, Dense((4, 6), "f16", data=torch.zeros(4, 6).half()))
    with pytest.raises(BackendError, match="layers.0.q_proj.*N:M"):
        lower_weight(rep, (4, 8), "layers.0.q_proj.weight")


def test_energy_meter_says_why_without_nvml():
    with EnergyMeter() as e:
        pass
    if not e.available:  # CPU CI: no number, a reason instead
        assert e.result.joules is None and "no energy reading" in e.result.source
        assert e.result.per(10) is None
    else:
        assert e.result.joules is not None and e.result.joules >= 0


def _every_format() -> list:
    """One lowered weight of each kernel specialisation the backend ships."""
    reps = [Dense((N, K), "f16", data=torch.randn(N, K).half()), _quant(N, K, 4, 64, "sym"),
            _quant(N, K, 3, 32, "int"), _quant(N, K, 2, 32, "float"), _quant(N, K, 8, 128, "sym"),
            _codebook(N, K, 4, 1, 0), _codebook(N, K, 8, N, 64), _codebook(N, K, 4, 1, 40, d=4, stages=2),
            _sparse(N, K, 2, 4, "f16"), _sparse(N, K, 2, 4, "q4"),
            LowRank(torch.randn(N, 8), torch.randn(8, K), _quant(N, K, 4, 64, "sym"))]
    return [lower_weight(r, (N, K), f"w{i}").spec for i, r in enumerate(reps)]


@pytest.mark.parametrize("arch", [80, 87, 89, 90])  # A100, Jetson Orin, RTX 4090, H100
def test_every_kernel_compiles_ahead_of_time(arch):
    from cllm_compiler.backends.triton_aot import compile_all
    out = compile_all(_every_format(), arch, batches=(1, 16))
    assert len(out) == 22  # 11 formats x (GEMV, tensor-core GEMM): none shared, none missing
    for k in out:
        assert k.arch == arch and k.cubin[:4] == b"\x7fELF", k.name
        assert k.ptx_target.startswith(f"sm_{arch}") and k.ptx_lines > 50, (k.name, k.ptx_target)


def _ir(tiny_dir, tmp_path, pipeline: str):
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.container import read_container
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    out = tmp_path / "art"
    compile_model(tiny_dir, get_target("h100"), parse_pipeline(pipeline), out, lower=False)
    return read_container(out / "model.cllm")


@pytest.mark.parametrize("pipeline", [
    "quant{bits=4,group=64},entropy{codec=rans}",
    "codebook{bits=4,scope=row},quant{bits=8,match=embed}",
    # 2:4 + int4 through the interpreter takes ~25 s: in the slow suite, which CI also runs
    pytest.param("nm{n=2,m=4,method=magnitude},quant{bits=4,group=64},quant{bits=6,match=embed}", marks=pytest.mark.slow),
    "quant{bits=3,group=64},lowrank{mode=correct,rank=8}",
])
def test_runtime_matches_torch_reference(tiny_dir, tmp_path, pipeline):
    """The GPU runtime (here interpreted on the CPU) against transformers on the same IR:
    prefill logits, then token-by-token decode through the static KV cache, batch 2."""
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.backends.triton_model import DecodeGraph, TritonLlama
    model = _ir(tiny_dir, tmp_path, pipeline)
    ids = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = build_torch_model(model)(ids).logits
    net = TritonLlama(model, device=DEV, batch=2, max_len=32, dtype=torch.float32)
    pre = net.prefill(ids[:, :8], last_only=False).cpu()
    torch.testing.assert_close(pre, ref[:, :8], atol=2e-4, rtol=1e-4)
    step = DecodeGraph(net)
    for p in range(8, 11):
        torch.testing.assert_close(step(ids[:, p], p).cpu()[:, 0], ref[:, p], atol=2e-4, rtol=1e-4)


def test_runtime_refuses_overlong_and_overwide_input(tiny_dir, tmp_path):
    from cllm_compiler.backends.triton_model import TritonLlama
    net = TritonLlama(_ir(tiny_dir, tmp_path, "quant{bits=4,group=64}"), device=DEV, batch=1, max_len=8)
    with pytest.raises(BackendError, match="exceed the KV cache"):
        net.prefill(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(BackendError, match="batch 2"):
        net.prefill(torch.zeros(2, 4, dtype=torch.long))


def test_h100_package_has_sm90_kernels_for_every_weight_format(tiny_dir, tmp_path):
    import json

    from cllm_compiler.compiler import compile_model
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    out = tmp_path / "h100"
    res = compile_model(tiny_dir, get_target("h100"),
                        parse_pipeline("nm{n=2,m=4,method=magnitude,match=mlp},quant{bits=4,group=64},"
                                       "entropy{codec=rans}"), out)
    man = json.loads((out / "triton" / "manifest.json").read_text())
    assert man["arch"] == "sm_90" and res.report["lowering"]["kernels"] == len(man["kernels"])
    formats = {w["format"] for w in man["weights"].values()}
    assert formats == {"q4g64i", "2of4q4g64i", "f16"}, formats  # attention int4, MLP 2:4+int4, f16 head
    assert len(man["kernels"]) == 3 * 6  # 3 formats x 6 batch buckets
    for k in man["kernels"]:
        cubin = out / "triton" / "kernels" / f"{k['kernel']}.sm_90.cubin"
        assert cubin.read_bytes()[:4] == b"\x7fELF" and k["ptx_target"].startswith("sm_90")
    # what the kernels read is what the .cllm stores, repacked: int4 + scales, not a dense copy
    assert man["kernel_bytes"] < 0.5 * 2 * res.report["params"]


def test_unstructured_sparsity_refused_for_h100_and_nothing_written(tiny_dir, tmp_path):
    from cllm_compiler.compiler import compile_model
    from cllm_compiler.pipeline import parse_pipeline
    from cllm_compiler.targets import get_target
    with pytest.raises(BackendError, match="model.layers.0.*N:M"):
        compile_model(tiny_dir, get_target("rtx-4090"),
                      parse_pipeline("nm{m=0,sparsity=0.5,method=magnitude},quant{bits=4}"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cllm_run_on_cuda_without_a_gpu_says_so(tiny_artifact, monkeypatch, capsys):
    from cllm_compiler.cli.run import main
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the device run covers --device cuda")
    assert main([str(tiny_artifact), "--prompt", "hi", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "hint" in err


@pytest.mark.slow  # ~3 min interpreted
def test_gpu_bench_scripts_run_in_smoke_mode(tiny_dir, tmp_path):
    """bench/triton_bench.py and triton_e2e.py run on the GPU only through the device tool; here their
    whole flow runs interpreted on tiny shapes, so a GPU session does not discover a broken script."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench" / "triton_bench.py"), "--smoke", "--kernels-only",
                        "--out", str(tmp_path / "k")], capture_output=True, text=True,
                       env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "k.json").read_text())
    assert {row["kernel"] for row in res["kernels"]} >= {"int4 g128", "lut4 row", "2:4 + int4", "torch fp16"}
    assert max(c["rel_max_err"] for c in res["correctness"]) < 1e-5
    sys.path.insert(0, str(root / "bench"))
    from triton_e2e import end_to_end
    rows = end_to_end(tiny_dir, "cpu", new_tokens=3, batches=(1, 2), prompt=8, scored=16, repeats=1)
    assert len(rows) == 8 and all(r["decode_tok_s"] > 0 and r["decode_j_per_token"] is None for r in rows)
    assert all(r["vs_torch_fp32_same_ir"]["top1_agree"] == 1.0 for r in rows if r["batch"] == 1)
