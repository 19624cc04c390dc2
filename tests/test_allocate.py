"""allocate: the file meets the bits/weight budget within 0.01 and bits go where error is."""
from __future__ import annotations

import itertools
import json

import pytest

from cllm_compiler.compiler import compile_model
from cllm_compiler.errors import PassError
from cllm_compiler.passes.allocate import solve
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import get_target

PIPE = ("calibrate{tokens=1024,seqlen=128},allocate{{budget={b},choices=bits=2|3|4|5|6|8;group=64|128}},gptq{{match=linear|embed|lm_head}},"
        "quant{{match=embed|lm_head}},entropy")


def test_solver_matches_brute_force():
    opts = [[(2, 9.0), (3, 4.0), (4, 1.0)], [(2, 5.0), (3, 4.5), (4, 4.4)], [(2, 20.0), (3, 6.0), (4, 2.0)]]
    for budget in range(6, 13):
        best = min((sum(o[i][1] for o, i in zip(opts, c)), c) for c in itertools.product(range(3), repeat=3)
                   if sum(o[i][0] for o, i in zip(opts, c)) <= budget)
        got = solve(opts, budget)
        assert sum(o[i][0] for o, i in zip(opts, got)) <= budget
        assert sum(o[i][1] for o, i in zip(opts, got)) == pytest.approx(best[0]), budget


@pytest.mark.parametrize("budget", [3.0, 4.5])
def test_file_meets_budget(tiny_dir, tmp_path, budget):
    pipe = PIPE.replace("{{", "{").replace("}}", "}").replace("{b}", str(budget))
    res = compile_model(tiny_dir, get_target("host"), parse_pipeline(pipe), tmp_path / "a")
    bpw = res.report["bits_per_weight"]
    assert abs(bpw - budget) <= 0.01, bpw
    assert bpw <= budget + 1e-9
    notes = [n for n in res.report["notes"] if "bits=" in n]
    chosen = {n.split(":")[0]: int(n.split("bits=")[1].split(",")[0]) for n in notes}
    assert len(set(chosen.values())) > 1  # a real allocation, not one width everywhere
    assert (tmp_path / "a" / "calibration.safetensors").is_file()


def test_infeasible_budget_is_a_clear_error(tiny_dir, tmp_path, monkeypatch):
    """Refused before calibration or any candidate runs (they take minutes on a real model)."""
    from cllm_compiler.passes import allocate, calibrate

    def no_work(*a, **k):
        raise AssertionError("worked before the budget was checked")
    monkeypatch.setattr(calibrate.CalibratePass, "run", no_work)
    monkeypatch.setattr(allocate.AllocatePass, "run", no_work)
    pipe = PIPE.replace("{{", "{").replace("}}", "}").replace("{b}", "1.0")
    with pytest.raises(PassError, match=r"below the smallest reachable .* \(sized before any work\)"):
        compile_model(tiny_dir, get_target("host"), parse_pipeline(pipe), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_early_floor_is_the_exact_floor_without_lossless_coding(tiny_dir, tmp_path):
    """Without entropy coding the early estimate (RTN codes in place of GPTQ's) is byte-exact: a
    budget just under the floor is refused before work, one just over it compiles to it."""
    pipe = PIPE.replace("{{", "{").replace("}}", "}").replace(",entropy", "")
    with pytest.raises(PassError, match="sized before any work") as err:
        compile_model(tiny_dir, get_target("host"), parse_pipeline(pipe.replace("{b}", "1.0")), tmp_path / "a")
    floor = float(str(err.value).split("reachable ")[1].split(" ")[0])
    res = compile_model(tiny_dir, get_target("host"), parse_pipeline(pipe.replace("{b}", str(floor + 0.001))),
                        tmp_path / "b")
    predicted = float(next(n for n in res.report["notes"] if "predicted" in n).split("predicted ")[1].split(" ")[0])
    assert floor - 0.0015 <= predicted <= floor + 0.0015  # every tensor at its smallest choice
    assert res.report["bits_per_weight"] <= floor + 0.001
    with pytest.raises(PassError, match="sized before any work"):
        compile_model(tiny_dir, get_target("host"), parse_pipeline(pipe.replace("{b}", str(floor - 0.002))),
                      tmp_path / "c")


@pytest.mark.slow  # ~17 s: two allocator runs in worker processes
def test_parallel_candidates_give_the_same_bytes(tiny_dir, tmp_path):
    """Forked workers simulate candidates; the artifact must not depend on how many."""
    pipe = PIPE.replace("{{", "{").replace("}}", "}").replace("{b}", "3.5")
    out = {}
    for w in (1, 2):
        p = pipe.replace("allocate{budget=3.5,", f"allocate{{budget=3.5,workers={w},")
        compile_model(tiny_dir, get_target("host"), parse_pipeline(p), tmp_path / f"w{w}")
        out[w] = (tmp_path / f"w{w}" / "model.cllm").read_bytes()
    assert out[1] == out[2]


def test_fisher_weights_are_mean_squared_output_gradients(tiny_tied_dir):
    """output_fisher = the mean over tokens of (d summed CE / d output channel)^2, per linear and
    for the tied head's logits, computed here independently with autograd.grad."""
    import torch
    from cllm_compiler.backends.torch_ref import build_torch_model
    from cllm_compiler.loading import load_model
    from cllm_compiler.passes.sensitivity import output_fisher
    model = load_model(tiny_tied_dir)
    windows = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    name = "model.layers.1.mlp.down_proj.weight"
    got = output_fisher(model, lambda n: model.tensors[n].rep.decode(), windows, {name, "lm_head.weight"})
    net = build_torch_model(model)
    mod = net.get_submodule(name.rsplit(".", 1)[0])
    want = {name: 0.0, "lm_head.weight": 0.0}
    for w in windows:
        outs = {}
        h = mod.register_forward_hook(lambda m, i, o: outs.__setitem__("y", o))
        logits = net(w[None]).logits
        h.remove()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], w[1:], reduction="sum")
        gy, gl = torch.autograd.grad(loss, [outs["y"], logits])
        want[name] = want[name] + gy[0].pow(2).sum(0)
        want["lm_head.weight"] = want["lm_head.weight"] + gl[0].pow(2).sum(0)
    for k in want:
        assert torch.allclose(got[k].float(), want[k] / 64, rtol=1e-4, atol=1e-12), k


def test_fisher_metric_meets_the_budget(tiny_tied_dir, tmp_path):
    pipe = PIPE.replace("{{", "{").replace("}}", "}").replace("{b}", "3.5")
    pipe = pipe.replace("allocate{budget=3.5,", "allocate{budget=3.5,metric=fisher,fisher_tokens=256,")
    res = compile_model(tiny_tied_dir, get_target("host"), parse_pipeline(pipe), tmp_path / "a")
    assert res.report["bits_per_weight"] <= 3.5 + 1e-9
    assert abs(res.report["bits_per_weight"] - 3.5) <= 0.02


def test_allocation_is_reused_only_when_everything_it_depends_on_matches(tiny_dir, tmp_path):
    pipe = PIPE.replace("{{", "{").replace("}}", "}").replace("{b}", "3.5").replace(";group=64|128", "")
    a = compile_model(tiny_dir, get_target("host"), parse_pipeline(pipe), tmp_path / "a")
    assert (tmp_path / "a" / "allocation.json").is_file()
    cached = pipe.replace("allocate{budget=3.5,", f"allocate{{budget=3.5,cache={tmp_path / 'a'},")
    b = compile_model(tiny_dir, get_target("host"), parse_pipeline(cached), tmp_path / "b")
    assert "allocation reused from cache" in b.report["notes"]
    assert (tmp_path / "a" / "model.cllm").read_bytes() == (tmp_path / "b" / "model.cllm").read_bytes()
    assert [n for n in a.report["notes"] if "bits=" in n] == [n for n in b.report["notes"] if "bits=" in n]
    other = compile_model(tiny_dir, get_target("host"), parse_pipeline(cached.replace("budget=3.5", "budget=4")),
                          tmp_path / "c")  # another budget: allocated afresh
    assert "allocation reused from cache" not in other.report["notes"]
    doc = json.loads((tmp_path / "a" / "allocation.json").read_text())
    first = next(iter(doc["plan"]))
    doc["plan"][first] = {"bits": "7"}  # not one of the choices: a tampered file is not trusted
    (tmp_path / "a" / "allocation.json").write_text(json.dumps(doc))
    d = compile_model(tiny_dir, get_target("host"), parse_pipeline(cached), tmp_path / "d")
    assert "allocation reused from cache" not in d.report["notes"]
    assert (tmp_path / "d" / "model.cllm").read_bytes() == (tmp_path / "b" / "model.cllm").read_bytes()
