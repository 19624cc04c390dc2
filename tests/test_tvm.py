"""TVM backend: compressed-layout kernels against numpy, the Relax model against the torch
reference (prefill and decode), the Jetson package (aarch64 + sm_87), aarch64 kernels under
qemu, and clear errors for what a target cannot run."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cllm_compiler.backends import tvm_kernels as K
from cllm_compiler.backends.tvm_layout import Layout, lower_weight, pack_codes
from cllm_compiler.backends.tvm_schedule import _matmul_cpu, _attention_cpu
from cllm_compiler.compiler import compile_model
from cllm_compiler.errors import BackendError, TargetError
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.reprs import Dense, Quantized
from cllm_compiler.reprs_codebook import Codebook
from cllm_compiler.targets import get_target
from tests.conftest import host_target_name, x86_params

RNG = np.random.default_rng(0)


def _quant(n: int, k: int, bits: int, group: int, zero: str) -> Quantized:
    ng = -(-k // group)
    codes = RNG.integers(0, 1 << bits, (n, k)).astype(np.uint8)
    scales = (RNG.random((n, ng)) * 0.1 + 0.01).astype(np.float16)
    zeros = RNG.integers(0, 1 << bits, (n, ng)).astype(np.uint8) if zero == "int" else None
    mins = (RNG.standard_normal((n, ng)) * 0.1).astype(np.float16) if zero == "float" else None
    return Quantized(codes, scales, zeros, bits, group, mins)


def _codebook(n: int, k: int, bits: int, nlut: int, group: int) -> Codebook:
    codes = RNG.integers(0, 1 << bits, (1, n, k)).astype(np.uint8)
    luts = RNG.standard_normal((1, nlut, 1 << bits, 1)).astype(np.float16)
    scales = (RNG.random((n, -(-k // group))) + 0.5).astype(np.float16) if group else None
    return Codebook(codes, luts, scales, group)


REPS = {
    "q4g128z": lambda: _quant(192, 576, 4, 128, "int"),   # ragged last group (576 = 4.5 x 128)
    "q4g32s": lambda: _quant(128, 256, 4, 32, "sym"),
    "q4g32m": lambda: _quant(64, 256, 4, 32, "float"),
    "q3g64z": lambda: _quant(80, 192, 3, 64, "int"),      # N = 80: 16-wide tiles
    "q2g64s": lambda: _quant(64, 128, 2, 64, "sym"),
    "q8g128z": lambda: _quant(128, 256, 8, 128, "int"),
    "lut3": lambda: _codebook(64, 256, 3, 1, 0),
    "lut4r_g64": lambda: _codebook(64, 256, 4, 64, 64),
    "dense": lambda: Dense((96, 64), data=torch.randn(96, 64)),
}


def _x86(name: str | None = None) -> dict:
    """The LLVM target of an x86 target (default: the one this host runs)."""
    return dict(get_target(name or host_target_name()).extra["tvm_target"])


def _run(func, arrays: list[np.ndarray], out_shape: tuple[int, ...], isa: str | None = None) -> np.ndarray:
    import tvm
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tvm.target.Target(_x86(isa)))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in [*arrays, np.zeros(out_shape, np.float32)]]
    lib["main"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize("codes_bits", [1, 2, 3, 4, 5, 8])
def test_pack_codes_roundtrip(codes_bits):
    lay = Layout("quant", 37, 32, codes_bits, 37, "sym", tile=16)
    codes = RNG.integers(0, 1 << codes_bits, (32, 37)).astype(np.uint8)
    packed = pack_codes(codes, lay)
    assert packed.shape == (2, -(-37 // lay.per), 16)
    flat = packed.transpose(1, 0, 2).reshape(-1, 32)  # [kp, N]
    out = np.stack([(flat >> (i * lay.pack_bits)) & ((1 << lay.pack_bits) - 1) for i in range(lay.per)], 1)
    assert np.array_equal(out.reshape(-1, 32)[:37].T, codes)


@pytest.mark.parametrize("isa", x86_params())
@pytest.mark.parametrize("name", list(REPS))
@pytest.mark.parametrize("rows", [1, 5])
def test_matmul_kernels_match_numpy(name, rows, isa):
    """GEMV (rows=1, grouped form) and GEMM (rows=5) on the compressed arrays == x @ decode(W).T,
    built for each x86 ISA this host runs."""
    rep = REPS[name]()
    w = rep.decode().numpy()
    lay, arrs = lower_weight(rep, w.shape, name)
    x = RNG.standard_normal((rows, w.shape[1])).astype(np.float32)
    func = _matmul_cpu(K.matmul(lay, 1 if rows == 1 else None)).mod["main"]
    got = _run(func, [x, *[arrs[s] for s, _, _ in lay.arrays()]], (rows, w.shape[0]), isa)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("isa", x86_params())
def test_attention_kernel_matches_torch(isa):
    layers, heads, kvh, dim, max_len, pos, m = 2, 4, 2, 16, 64, 7, 5
    cache = np.zeros(K.cache_shape(layers, kvh, dim, max_len), np.float32)
    k = RNG.standard_normal((pos + m, kvh, dim)).astype(np.float32)
    v = RNG.standard_normal((pos + m, kvh, dim)).astype(np.float32)
    for t in range(pos + m):  # the layout kv_append writes: keys transposed, values row-major
        cache[1, 0, :, np.arange(dim) * max_len + t] = k[t].T
        cache[1, 1, :, t * dim:(t + 1) * dim] = v[t]
    q = RNG.standard_normal((m, heads, dim)).astype(np.float32)
    import tvm
    func = _attention_cpu(K.attention(layers, heads, kvh, dim, max_len)).mod["main"]
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tvm.target.Target(_x86(isa)))
    out = tvm.runtime.tensor(np.zeros((m, heads, dim), np.float32))
    lib["main"](tvm.runtime.tensor(q), tvm.runtime.tensor(cache), pos, 1, out)
    kk, vv = (torch.from_numpy(a).repeat_interleave(heads // kvh, 1).transpose(0, 1) for a in (k, v))
    mask = torch.arange(pos + m)[None, :] <= (pos + torch.arange(m))[:, None]
    ref = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q).transpose(0, 1), kk, vv, attn_mask=mask)
    assert np.abs(out.numpy() - ref.transpose(0, 1).numpy()).max() < 1e-5


INT8 = {"x86-avx2": ("avx2", "a"), "x86-avx512": ("vnni", "v")}


@pytest.mark.parametrize("isa", x86_params())
@pytest.mark.parametrize("zero", ["int", "sym", "float"])
@pytest.mark.parametrize("bits,rows", [(4, 1), (8, 1), (4, 6), (8, 5)])  # 6, 5: a block of 4 rows + the rest
def test_int8_gemv_matches_int8_activation_reference(zero, isa, bits, rows):
    """The int8-activation decode GEMV (AVX2 maddubs/madd, AVX-512 VNNI) equals a numpy model of it
    (per-block int8 activations, integer dot products) to fp32 rounding, and the float product to
    the int8 error."""
    dot, suffix = INT8[isa]
    assert get_target(isa).extra["int8_dot"] == dot
    rep = _quant(192, 576, bits, 128, zero)
    if bits == 8 and zero != "float":  # codes at both ends of the byte range: the s8 shift's edge cases
        rep.codes[:, :4] = np.array([0, 255, 128, 127], np.uint8)
    lay, arrs = lower_weight(rep, (192, 576), "w", int8=dot)
    assert lay.int8 == dot and lay.tag.endswith(suffix)
    x = RNG.standard_normal((rows, 576)).astype(np.float32)
    x[0, 7] = 40.0  # an outlier: its block's scale is large, the rest of the block coarse
    got = _run(K.matmul(lay, 1 if rows == 1 else None, int8_rows=True), [x, *[arrs[s] for s, _, _ in lay.arrays()]], (rows, 192), isa)
    for r in range(rows):  # each row with its own int8 scales
        _check_int8(got[r:r + 1], x[r:r + 1], rep, 64)  # B = gcd(128, 576) = 64


def _check_int8(got: np.ndarray, x: np.ndarray, rep: Quantized, block: int) -> None:
    """`got` equals x @ W.T with x quantized to int8 per block of `block` inputs (to fp32 rounding),
    and the float product to the int8 error."""
    blocks = x.reshape(-1, block)
    sa = np.abs(blocks).max(1, keepdims=True) / 127
    xq = (np.round(blocks / sa) * sa).reshape(1, -1)
    w = rep.decode().numpy().astype(np.float64)
    assert np.abs(got - xq @ w.T).max() <= 1e-4 * np.abs(xq @ w.T).max()
    ref = x.astype(np.float64) @ w.T  # rounding each activation moves it by <= its block's max / 254
    assert np.abs(got - ref).max() <= (np.abs(x.astype(np.float64)) @ np.abs(w).T).max() / 100


@pytest.mark.parametrize("isa", x86_params())
def test_int8_layout_decodes_in_the_prefill_kernels(isa):
    rep = _quant(64, 256, 3, 64, "int")
    lay, arrs = lower_weight(rep, (64, 256), "w", int8=INT8[isa][0])
    x = RNG.standard_normal((4, 256)).astype(np.float32)
    got = _run(_matmul_cpu(K.matmul(lay)).mod["main"], [x, *[arrs[s] for s, _, _ in lay.arrays()]], (4, 64), isa)
    ref = x.astype(np.float64) @ rep.decode().numpy().T.astype(np.float64)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("isa", x86_params())
def test_int8_decode_is_the_default_on_x86_and_close_to_torch(tiny_dir, tmp_path, monkeypatch, isa):
    import json
    from cllm_compiler.backends.tvm_run import TvmModel
    from cllm_compiler.validate import compare_logits
    monkeypatch.delenv("CLLM_DECODE_ACTIVATIONS")
    res = _compile_x86(tiny_dir, tmp_path / "a", "quant{bits=4,group=64},entropy", isa=isa)
    man = json.loads((res.out / "tvm" / "tvm.json").read_text())
    assert man["decode_activations"].startswith("int8") and f"q4g64z{INT8[isa][1]}" in man["kernels"]
    ids = torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(1))
    ref = _torch_logits(res.out, ids)
    tm = TvmModel(res.out / "tvm")
    tm.logits(ids[:1].tolist(), last_only=True)
    steps = [torch.from_numpy(tm.logits(ids[:1].tolist()))[0]]
    steps += [torch.from_numpy(tm._run("decode", [int(ids[p])], p)[0]) for p in range(1, 64)]
    q = compare_logits(ref, torch.stack(steps), ids)
    assert q["kld_mean"] < 0.01 and abs(q["ppl_device"] / q["ppl_torch"] - 1) < 0.02, q
    # generation's prefill runs every row with int8 activations too; evaluation's stays fp32
    fast = torch.from_numpy(tm.logits(ids[:48].tolist(), last_only=True))
    exact = torch.from_numpy(tm.logits(ids[:48].tolist()))[-1:]
    assert torch.allclose(exact, ref[47:48], atol=1e-4)
    kld = torch.nn.functional.kl_div(fast.log_softmax(-1), ref[47:48].log_softmax(-1), log_target=True, reduction="sum")
    assert 0 < float(kld) < 0.01 and not torch.equal(fast, exact)


def _compile_x86(src: Path, out: Path, pipe: str, isa: str | None = None, **kw):
    return compile_model(src, get_target(isa or "host"), parse_pipeline(pipe), out, seqlen=128, **kw)


@pytest.fixture(scope="module", params=x86_params())
def x86_artifact(tiny_dir, tmp_path_factory, request) -> Path:
    out = tmp_path_factory.mktemp("tvm") / "a"
    _compile_x86(tiny_dir, out, "quant{bits=4,group=128},quant{bits=8,group=128,match=embed|lm_head},entropy",
                 isa=request.param)
    return out


def _torch_logits(art: Path, ids: torch.Tensor) -> torch.Tensor:
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.container import read_container
    with torch.inference_mode():
        return build_torch_model(read_container(art / "model.cllm"))(ids[None]).logits[0]


def test_x86_package_matches_torch_prefill_and_decode(x86_artifact):
    from cllm_compiler.backends.tvm_run import TvmModel
    from cllm_compiler.validate import compare_logits
    pkg = x86_artifact / "tvm"
    assert {p.name for p in pkg.iterdir()} == {"model.so", "weights.safetensors", "tvm.json"}
    ids = torch.randint(0, 512, (200,), generator=torch.Generator().manual_seed(0))
    ref = _torch_logits(x86_artifact, ids)
    tm = TvmModel(pkg, chunk=64)  # 200 tokens in 4 chunks: exercises pos > 0 prefill
    q = compare_logits(ref, torch.from_numpy(tm.logits(ids.tolist())), ids)
    assert q["kld_mean"] < 1e-6 and q["top1_agree"] == 1.0
    assert abs(q["ppl_device"] / q["ppl_torch"] - 1) < 1e-4
    # decode: token-by-token logits through the GEMV kernels and the KV cache
    tm.logits(ids[:150].tolist(), last_only=True)
    for pos in range(150, 160):
        step = tm._run("decode", [int(ids[pos])], pos)[0]
        assert np.abs(step - ref[pos].numpy()).max() < 1e-3


def test_x86_generate_equals_torch_greedy(x86_artifact):
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.backends.tvm_run import TvmModel
    from cllm_compiler.container import read_container
    prompt = [5, 17, 99, 200, 3]
    net = build_torch_model(read_container(x86_artifact / "model.cllm"))
    with torch.inference_mode():
        want = net.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, 5:]
    assert TvmModel(x86_artifact / "tvm").generate_ids(prompt, 12) == want.tolist()


def test_compile_report_has_tvm_backend_eval(tiny_dir, tmp_path):
    res = _compile_x86(tiny_dir, tmp_path / "a", "codebook{bits=3,scope=tensor},quant{bits=8,group=64,match=embed},entropy",
                       eval_windows=1)
    low, tvm_eval = res.report["lowering"], res.report["eval"]["backends"]["tvm"]
    assert low["backend"] == "tvm" and "lut3g128" in low["tensor_types"]
    assert tvm_eval["vs_torch_same_weights"]["top1_agree"] >= 0.99
    assert tvm_eval["vs_torch_same_weights"]["kld_mean"] < 1e-5
    assert tvm_eval["speed"]["decode_tok_s"] > 0 and tvm_eval["speed"]["label"].startswith("measured")
    # the headline estimate for this host (roofline with compute) is within 2x of the measurement
    est = res.report["estimates"]["decode_tokens_per_s_this_host"]
    assert est["status"] == "estimated" and "this host, 1 thread" in est["model"]
    assert 0.5 < est["value"] / tvm_eval["speed"]["decode_tok_s"] < 2.0, (est, tvm_eval["speed"])


def test_unsupported_format_refused_before_any_work(tiny_dir, tmp_path):
    with pytest.raises(TargetError, match=f"sparse.*{host_target_name()}") as e:
        _compile_x86(tiny_dir, tmp_path / "a", "nm{n=2,m=4},quant{bits=4,group=64}")
    assert "dense, quant, codebook, encoded" in (e.value.hint or "")
    assert not (tmp_path / "a").exists()
    res = _compile_x86(tiny_dir, tmp_path / "b", "nm{n=2,m=4,method=magnitude}", lower=False)  # portable .cllm only
    assert not (res.out / "tvm").exists() and isinstance(res.report["lowering"], str)


def test_vector_codebook_refused_and_lowering_names_the_tensor(tiny_dir, tmp_path):
    with pytest.raises(TargetError, match="'vq'"):
        _compile_x86(tiny_dir, tmp_path / "a", "codebook{bits=2,d=2,scope=tensor}")
    assert not (tmp_path / "a").exists()
    from cllm_compiler.backends.tvm_build import check_model
    from cllm_compiler.loading import load_model
    res = _compile_x86(tiny_dir, tmp_path / "b", "codebook{bits=2,d=2,scope=tensor}", lower=False)
    with pytest.raises(BackendError, match=r"tensor 'model\.layers\.0\..*': .*no kernel for 'vq2") as e:
        check_model(load_model(res.out))
    assert "TVM kernels read" in (e.value.hint or "")


def test_tvm_tag_for_orin_names_wrong_cpu_and_ours_fixes_it():
    import tvm
    tag = tvm.target.Target("nvidia/jetson-orin-nano")
    assert str(tag.host.attrs["mcpu"]) == "carmel"  # Xavier's CPU: why targets.toml spells the target out
    for name in ("jetson-orin-agx-64gb", "jetson-orin-agx-32gb", "jetson-orin-nano-8gb"):
        t = get_target(name).extra["tvm_target"]
        assert t["arch"] == "sm_87" and t["host"]["mcpu"] == "cortex-a78ae"


needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("nvcc") is None,
                                 reason="needs g++-aarch64-linux-gnu and nvcc (scripts/setup.sh installs them)")


@needs_cross
def test_jetson_package_builds_for_sm87_and_aarch64(tiny_dir, tmp_path):
    import json
    res = compile_model(tiny_dir, get_target("jetson-orin-nano-8gb"),
                        parse_pipeline("quant{bits=4,group=64},quant{bits=8,group=64,match=embed},entropy"),
                        tmp_path / "o", seqlen=128)
    pkg = res.out / "tvm"
    man = json.loads((pkg / "tvm.json").read_text())
    assert man["cuda_arch"] == "sm_87" and man["requires"]["cuda_toolkit_used"][0].isdigit()
    assert (pkg / "model_aarch64.so").read_bytes()[:4] == b"\x7fELF"
    assert int.from_bytes((pkg / "model_aarch64.so").read_bytes()[18:20], "little") == 183  # EM_AARCH64
    assert man["cuda_kernels"] >= 10 and "__global__" in (pkg / "kernels.cu").read_text()
    cuobjdump = _cuobjdump()
    import subprocess
    listing = subprocess.run([cuobjdump, "--list-elf", str(pkg / "kernels_sm87.cubin")], capture_output=True,
                             text=True, check=True).stdout
    assert "sm_87" in listing


def _cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import nvidia  # the nvidia-cuda-cuobjdump wheel (test extra)
    for base in nvidia.__path__:
        for p in Path(base).glob("*/bin/cuobjdump"):
            return str(p)
    raise AssertionError("cuobjdump not found: pip install nvidia-cuda-cuobjdump")


@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="needs qemu-user and gcc-aarch64-linux-gnu (scripts/setup.sh installs them)")
@pytest.mark.parametrize("rows", [1, 3])
def test_aarch64_kernels_under_qemu_match_numpy(tmp_path, rows):
    from cllm_compiler.backends.tvm_crosscheck import build_runner, run_kernel
    rep = _quant(128, 576, 4, 128, "int")
    lay, arrs = lower_weight(rep, (128, 576), "w")
    x = RNG.standard_normal((rows, 576)).astype(np.float32)
    func = _matmul_cpu(K.matmul(lay, 1 if rows == 1 else rows)).mod["main"]
    exe = build_runner(func, tmp_path)
    assert exe.read_bytes()[18:20] == (183).to_bytes(2, "little")  # an aarch64 executable
    got = run_kernel(exe, [x, *[arrs[s] for s, _, _ in lay.arrays()]], (rows, 128))
    ref = x.astype(np.float64) @ rep.decode().numpy().T.astype(np.float64)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert not math.isnan(float(got.sum()))


EVEX = re.compile(r"%(zmm\d+|k[0-7]\b|[xy]mm(1[6-9]|2\d|3[01])\b)")


def evex_instructions(library: Path) -> list[str]:
    """AVX-512 (EVEX-encoded) instructions in a shared library: a zmm, mask or upper-16 vector
    register, or an instruction whose first byte is 0x62 (EVEX; BOUND is invalid in 64-bit mode)."""
    import subprocess
    text = subprocess.run(["objdump", "-d", "-w", str(library)],
                          capture_output=True, text=True, check=True).stdout
    hits = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and (parts[1].strip().startswith("62 ") or EVEX.search(parts[2])):
            hits.append(line.strip())
    return hits


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_x86_packages_use_only_their_isa(x86_artifact):
    """An x86-avx2 package holds no AVX-512 instruction (it runs on AVX2-only laptops and VMs);
    an x86-avx512 package does use them (the check can see them)."""
    import json
    man = json.loads((x86_artifact / "tvm" / "tvm.json").read_text())
    hits = evex_instructions(x86_artifact / "tvm" / man["library"])
    if man["target"] == "x86-avx2":
        assert not hits, hits[:5]
    else:
        assert len(hits) > 100


def _qemu_tools_missing() -> list[str]:
    from cllm_compiler.backends.tvm_crosscheck import missing_tools
    return missing_tools("x86-avx2")


needs_qemu_x86 = pytest.mark.skipif(bool(_qemu_tools_missing()), reason="needs gcc and qemu-user (qemu-x86_64)")


@needs_qemu_x86
@pytest.mark.parametrize("name,rows", [("int8", 1), ("int8", 6), ("int8w", 5), ("q4g128z", 1), ("q4g128z", 3), ("lut4r_g64", 1),
                                       ("lut4r_g64", 3), ("dense", 1)])
def test_avx2_kernels_run_on_an_emulated_avx2_only_cpu(tmp_path, name, rows):
    """x86-avx2 kernels, linked into a static runner, give numpy's answer on qemu's Haswell (AVX2 +
    FMA, no AVX-512): they run on such a CPU, whatever CPU runs the tests."""
    from cllm_compiler.backends.tvm_crosscheck import build_runner, run_kernel
    rep = _quant(192, 576, 8 if name == "int8w" else 4, 128, "int") if name.startswith("int8") else REPS[name]()
    n, k = rep.decode().shape
    lay, arrs = lower_weight(rep, (n, k), "w", int8="avx2" if name.startswith("int8") else "")
    x = RNG.standard_normal((rows, k)).astype(np.float32)
    func = K.matmul(lay, 1 if rows == 1 else None, int8_rows=True) if lay.int8 else \
        _matmul_cpu(K.matmul(lay, 1 if rows == 1 else rows)).mod["main"]
    exe = build_runner(func, tmp_path, machine="x86-avx2")
    got = run_kernel(exe, [x, *[arrs[s] for s, _, _ in lay.arrays()]], (rows, n), machine="x86-avx2")
    if lay.int8:
        for r in range(rows):  # every row with its own int8 scales
            _check_int8(got[r:r + 1], x[r:r + 1], rep, 64)
    else:
        ref = x.astype(np.float64) @ rep.decode().numpy().T.astype(np.float64)
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@needs_qemu_x86
def test_avx512_kernel_dies_on_the_emulated_avx2_cpu(tmp_path):
    """The emulated CPU really lacks AVX-512: the VNNI kernel built for x86-avx512 is SIGILL there,
    which is why a package is never run on a host without its target's flags."""
    from cllm_compiler.backends.tvm_crosscheck import build_runner, run_kernel
    rep = _quant(64, 256, 4, 128, "int")
    lay, arrs = lower_weight(rep, (64, 256), "w", int8="vnni")
    exe = build_runner(K.matmul(lay, 1), tmp_path, target=dict(get_target("x86-avx512").extra["tvm_target"]),
                       machine="x86-avx2")
    x = RNG.standard_normal((1, 256)).astype(np.float32)
    with pytest.raises(BackendError, match="exit -4|Illegal instruction"):
        run_kernel(exe, [x, *[arrs[s] for s, _, _ in lay.arrays()]], (1, 64), machine="x86-avx2")


RUN_IN_QEMU = """
import sys, numpy as np
from cllm_compiler.backends.tvm_run import TvmModel
tm = TvmModel(sys.argv[1])
ids = list(range(5, 37))
out = [tm.logits(ids)] + [tm._run("decode", [7 + i], 32 + i) for i in range(4)]
np.save(sys.argv[2], np.concatenate(out))
"""


@pytest.mark.slow  # ~30 s under qemu; the kernel-level qemu checks stay in the default suite
@needs_qemu_x86
def test_avx2_package_runs_on_an_emulated_avx2_only_cpu(tiny_dir, tmp_path, monkeypatch):
    """A whole x86-avx2 package (int8-activation decode on) loaded by cllm's runner in Python on
    qemu's Haswell gives the same logits, bit for bit, as on this CPU."""
    import subprocess
    import sys
    monkeypatch.setenv("CLLM_DECODE_ACTIVATIONS", "int8")
    res = _compile_x86(tiny_dir, tmp_path / "a", "quant{bits=4,group=64},quant{bits=8,group=128,match=embed},entropy",
                       isa="x86-avx2", eval_windows=0)
    script = tmp_path / "run.py"
    script.write_text(RUN_IN_QEMU)
    env = {**__import__("os").environ, "CLLM_HIDE_CPU_FLAGS": "avx512*"}
    outs = {}
    for where, prefix in (("here", []), ("qemu", ["qemu-x86_64", "-cpu", "Haswell-v4"])):
        outs[where] = tmp_path / f"{where}.npy"
        r = subprocess.run([*prefix, sys.executable, str(script), str(res.out / "tvm"), str(outs[where])],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    here, emulated = np.load(outs["here"]), np.load(outs["qemu"])
    assert here.shape == (36, 512) and np.array_equal(here, emulated)


def test_package_files_are_checked_before_loading(x86_artifact, tmp_path):
    """Issue 22: a TVM package is native code, so the runner loads only the library tvm.json names
    inside the package, with the sha256 it records; anything else is refused before loading."""
    import json
    import shutil
    from cllm_compiler.backends.tvm_run import TvmModel
    pkg = tmp_path / "tvm"
    shutil.copytree(x86_artifact / "tvm", pkg)
    man = json.loads((pkg / "tvm.json").read_text())
    assert set(man["sha256"]) == {"model.so", "weights.safetensors"}
    TvmModel(pkg).close()  # intact: loads

    def variant(**change):
        (pkg / "tvm.json").write_text(json.dumps({**man, **change}))
    for lib in ("/lib/x86_64-linux-gnu/libc.so.6", "../tvm/model.so", "", 7):
        variant(library=lib)
        with pytest.raises(BackendError, match="inside the package"):
            TvmModel(pkg)
    variant(sha256={})
    with pytest.raises(BackendError, match="no sha256") as e:
        TvmModel(pkg)
    assert "recompile" in e.value.hint
    variant()
    data = bytearray((pkg / "model.so").read_bytes())
    data[len(data) // 2] ^= 1
    (pkg / "model.so").unlink()  # a new file: the loaded library's pages must not change under it
    (pkg / "model.so").write_bytes(bytes(data))
    with pytest.raises(BackendError, match="sha256 differs"):
        TvmModel(pkg)
    (pkg / "model.so").unlink()
    (pkg / "model.so").symlink_to(x86_artifact / "tvm" / "model.so")
    with pytest.raises(BackendError, match="not a regular file"):
        TvmModel(pkg)
    (pkg / "tvm.json").write_bytes(b"\xff\xfe[1, 2]")
    with pytest.raises(BackendError, match="not a valid package manifest"):
        TvmModel(pkg)
