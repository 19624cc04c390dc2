import pytest

from cllm_compiler.errors import PassError, PipelineError
from cllm_compiler.passes_base import PASSES, Pass, register_pass
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import load_recipe, parse_pipeline, pipeline_text


def test_parse_and_canonical_text():
    ps = parse_pipeline("quant{bits=3,group=64,match=attn|mlp_down},entropy{codec=zstd}")
    assert [p.name for p in ps] == ["quant", "entropy"]
    assert ps[0].args["bits"] == 3 and ps[0].args["group"] == 64
    assert ps[0].roles == {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_down"}
    again = parse_pipeline(pipeline_text(ps))
    assert pipeline_text(again) == pipeline_text(ps)


def test_group_channel_and_bool():
    p = parse_pipeline("quant{group=channel,sym=true}")[0]
    assert p.args["group"] == 0 and p.args["sym"] is True


@pytest.mark.parametrize("text,needle", [
    ("quantize{bits=4}", "unknown pass 'quantize'"),
    ("quant{bitz=4}", "no parameter 'bitz'"),
    ("quant{bits=9}", "out of range"),
    ("quant{bits=four}", "not a whole number"),
    ("quant{bits=4", "does not parse"),
    ("quant{bits}", "has no '='"),
    ("entropy{codec=lzma}", "not allowed"),
    ("quant{match=attention}", "unknown tensor role"),
    ("", "empty pipeline"),
])
def test_bad_pipelines_name_the_problem(text, needle):
    with pytest.raises(PassError) as e:  # PipelineError is a PassError
        parse_pipeline(text)
    assert needle in e.value.format()
    assert e.value.hint  # every error teaches what to do


def test_unknown_pass_lists_the_valid_ones():
    with pytest.raises(PipelineError) as e:
        parse_pipeline("nope")
    assert "quant" in e.value.hint and "entropy" in e.value.hint


def test_duplicate_registration_is_an_error():
    class Dup(Pass):
        name = "quant"
    with pytest.raises(PassError):
        register_pass(Dup)
    assert PASSES["quant"].__name__ == "QuantPass"


def test_requires_is_checked():
    class NeedsQuant(Pass):
        name = "needs-quant-test"
        requires = frozenset({"quantized"})

        def run(self, model):
            raise AssertionError
    with pytest.raises(PassError, match="requires quantized"):
        PassManager([NeedsQuant()])
    PassManager([*parse_pipeline("quant"), NeedsQuant()])


def test_yaml_recipe(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("pipeline:\n  - quant: {bits: 3, group: 32}\n  - entropy\n")
    ps = load_recipe(r)
    assert [p.name for p in ps] == ["quant", "entropy"] and ps[0].args["bits"] == 3
    r.write_text("pipeline: 'quant{bits=5}'\n")
    assert load_recipe(r)[0].args["bits"] == 5
    r.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(PipelineError):  # safe_load refuses arbitrary objects
        load_recipe(r)
    r.write_text("steps: []\n")
    with pytest.raises(PipelineError, match="pipeline"):
        load_recipe(r)
