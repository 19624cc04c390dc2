import pytest

from cllm_compiler.errors import TargetError
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import DEFAULT_TARGET, TARGETS, get_target

REQUIRED = ["x86-avx512", "x86-avx2", "jetson-orin-agx-64gb", "jetson-orin-agx-32gb", "jetson-orin-nano-8gb",
            "h100", "rtx-4090", "gguf-cpu", "onnx-cpu"]


@pytest.mark.parametrize("name", REQUIRED)
def test_target_facts_and_default_pipeline(name):
    t = get_target(name)
    assert t.memory_gb > 0 and t.bandwidth_gbs > 0 and t.compute_tflops > 0
    assert t.sources, "facts must cite a vendor document"
    assert parse_pipeline(t.default_pipeline)


def test_orin_is_cortex_a78ae_sm87():
    for name in REQUIRED[2:5]:
        t = TARGETS[name]
        assert "A78AE" in t.extra["cpu"]
        assert t.extra["tvm_target"]["arch"] == "sm_87"
        assert t.extra["tvm_target"]["host"]["mcpu"] == "cortex-a78ae"


def test_default_and_unknown():
    assert DEFAULT_TARGET == "host"
    with pytest.raises(TargetError) as e:
        get_target("jetson-xavier")
    assert "host" in e.value.hint and "x86-avx2" in e.value.hint


AVX2 = frozenset("fpu sse sse2 avx avx2 fma f16c bmi1 bmi2 abm movbe".split())
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16"}


@pytest.mark.parametrize("flags,want", [(AVX512, "x86-avx512"), (AVX2, "x86-avx2"),
                                        (AVX512 - {"avx512_vnni"}, "x86-avx2")])  # Skylake-SP: no VNNI
def test_host_target_is_the_best_the_flags_allow(flags, want):
    from cllm_compiler.targets.host import pick_host_target
    choice = pick_host_target(flags, "x86_64")
    assert choice.target.name == want
    if want == "x86-avx2":
        assert "not x86-avx512: no " in choice.reason


def test_host_without_avx2_or_not_x86_is_refused():
    from cllm_compiler.targets.host import pick_host_target
    with pytest.raises(TargetError, match="lacks|none of") as e:
        pick_host_target(AVX2 - {"avx2"}, "x86_64")
    assert "avx2" in e.value.message and "gguf-cpu" in e.value.hint
    with pytest.raises(TargetError, match="aarch64") as e:
        pick_host_target(AVX2, "aarch64")
    assert "gguf-cpu" in e.value.hint


def test_host_flags_read_hide_and_fail_clearly(tmp_path, monkeypatch):
    from cllm_compiler.targets import host
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f avx512_vnni fma\n\nprocessor\t: 1\n")
    assert host.read_flags(info) == {"fpu", "avx2", "avx512f", "avx512_vnni", "fma"}
    assert host.host_flags(info, hide="avx512*") == {"fpu", "avx2", "fma"}
    monkeypatch.setenv(host.HIDE_ENV, "avx512*, fma")
    assert host.host_flags(info) == {"fpu", "avx2"}
    with pytest.raises(TargetError, match="cannot read") as e:
        host.read_flags(tmp_path / "missing")
    assert "--target x86-avx2" in e.value.hint
    info.write_text("processor : 0\n")
    with pytest.raises(TargetError, match="no CPU flags"):
        host.read_flags(info)


def test_host_resolves_for_this_cpu():
    from cllm_compiler.targets.host import host_flags, missing_flags, resolve_target
    t, why = resolve_target("host")
    assert t.name in ("x86-avx512", "x86-avx2") and not missing_flags(t, host_flags())
    assert why.startswith(f"--target host: {t.name}, this CPU has ")
    assert resolve_target("gguf-cpu") == (get_target("gguf-cpu"), "")


def test_x86_targets_int8_dot_and_isa_agree():
    """The integer-dot kernel each x86 target uses needs flags its isa list names (the host check
    reads that list): VNNI's vpdpbusd avx512_vnni, AVX2's vpmaddubsw avx2."""
    need = {"vnni": "avx512_vnni", "avx2": "avx2"}
    for name in ("x86-avx512", "x86-avx2"):
        t = get_target(name)
        assert need[t.extra["int8_dot"]] in t.extra["isa"]
        assert ("avx512f" in t.extra["isa"]) == (t.extra["tvm_target"]["mcpu"] == "x86-64-v4")


def test_speed_model_accounts_for_compute_and_bandwidth():
    from cllm_compiler.targets.speed import decode_estimate
    t = get_target("x86-avx2")
    sm = t.extra["speed_model"]
    # 135M params, 4-bit: compute-bound on the whole device and on one thread
    counts = {"int": 134_000_000, "lut": 0, "f32": 0}
    one = decode_estimate(t, 70_000_000, counts, 30, threads=1, int8=True, on_host=True)
    dev = decode_estimate(t, 70_000_000, counts, 30, int8=True)
    assert one["status"] == dev["status"] == "estimated" and one["unit"] == "tokens/s"
    assert one["threads"] == 1 and dev["threads"] == sm["cores"] and dev["value"] > one["value"]
    f32 = decode_estimate(t, 70_000_000, counts, 30, threads=1, int8=False, on_host=True)
    assert f32["value"] < one["value"]  # the fp32 kernels are slower per weight
    lut = decode_estimate(t, 70_000_000, {"int": 0, "lut": 134_000_000, "f32": 0}, 30, threads=1, on_host=True)
    assert lut["value"] < f32["value"]  # and table lookups slower still
    # bytes dominate when the weights are many and cheap to decode
    mem = decode_estimate(t, 10**10, {"int": 1000, "lut": 0, "f32": 1000}, 1)
    assert mem["bound"] == "memory" and mem["value"] == pytest.approx(t.bandwidth_gbs * 1e9 / 10**10)
    gpu = decode_estimate(get_target("h100"), 10**6, {"int": 10**12, "lut": 0, "f32": 0}, 1)  # no speed_model
    assert gpu["bound"] == "compute" and gpu["value"] == pytest.approx(989e12 / 2e12)


def test_roofline_estimate_scales_with_bytes():
    t = get_target("h100")
    assert t.decode_tokens_per_s_estimate(10**9) == pytest.approx(3350.0)
    assert t.decode_tokens_per_s_estimate(5 * 10**8) == pytest.approx(6700.0)
