import pytest

from cllm_compiler.errors import TargetError
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import DEFAULT_TARGET, TARGETS, get_target

REQUIRED = ["x86-avx512", "jetson-orin-agx-64gb", "jetson-orin-agx-32gb", "jetson-orin-nano-8gb",
            "h100", "rtx-4090", "gguf-cpu", "onnx-cpu"]


@pytest.mark.parametrize("name", REQUIRED)
def test_target_facts_and_default_pipeline(name):
    t = get_target(name)
    assert t.memory_gb > 0 and t.bandwidth_gbs > 0 and t.compute_tflops > 0
    assert t.sources, "facts must cite a vendor document"
    assert parse_pipeline(t.default_pipeline)


def test_orin_is_cortex_a78ae_sm87():
    for name in REQUIRED[1:4]:
        t = TARGETS[name]
        assert "A78AE" in t.extra["cpu"]
        assert t.extra["tvm_target"]["arch"] == "sm_87"
        assert t.extra["tvm_target"]["host"]["mcpu"] == "cortex-a78ae"


def test_default_and_unknown():
    assert DEFAULT_TARGET == "x86-avx512"
    with pytest.raises(TargetError) as e:
        get_target("jetson-xavier")
    assert "x86-avx512" in e.value.hint


def test_roofline_estimate_scales_with_bytes():
    t = get_target("h100")
    assert t.decode_tokens_per_s_estimate(10**9) == pytest.approx(3350.0)
    assert t.decode_tokens_per_s_estimate(5 * 10**8) == pytest.approx(6700.0)
