"""Per-target validation end to end on a tiny model: compile --validate writes a schema-valid
report.json and a report.html that renders in headless Chromium with its plots; the
cross-backend check fails above its tolerance; the device registry; an unreachable device
still gives a report saying what was not measured; per-target plans and --targets."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cllm_compiler.cli.compile import main as compile_main
from cllm_compiler.cli.validate import main as validate_main
from cllm_compiler.devices import Device, load_registry, resolve
from cllm_compiler.errors import CllmError, TargetError
from cllm_compiler.targets import get_target
from cllm_compiler.targets.plan import plan
from cllm_compiler.validation.report import check

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def validated(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("val") / "x86"
    rc = compile_main([str(tiny_dir), "-o", str(out), "--validate", "--repeats", "5", "--eval-windows", "1",
                       "--seqlen", "256"])
    assert rc == 0
    return out


def test_report_json_follows_its_schema_and_tags_every_number(validated):
    r = json.loads((validated / "report.json").read_text())
    check(r)  # raises on any schema break
    v = r["validation"]
    assert r["plan"]["pipeline"].startswith("calibrate,gptq") and len(r["plan"]["reasons"]) == 3
    lat = v["latency"]
    assert set(lat) == {"tvm", "llama.cpp (same IR)"}
    d = lat["tvm"]["decode_ms_per_token"]
    assert d["repeats"] == 5 and len(d["samples"]) == 5 and d["p50"] <= d["p95"] and d["cv"] >= 0
    assert v["latency_ratio_vs_peer"]["tvm"]["decode"] > 0
    eq = v["equivalence"]
    assert eq["passed"] and {"torch", "tvm", "llama.cpp", "onnxruntime"} <= {p["a"] for p in eq["pairs"]} | {p["b"] for p in eq["pairs"]}
    assert all(p["kld_mean"] < 1e-6 and p["top1_agree"] == 1.0 for p in eq["pairs"])  # same weights, fp32 paths
    assert v["energy"]["estimate"]["status"] == "estimated" and "GB/s" in v["energy"]["estimate"]["model"]
    assert v["energy"]["measured"]["status"] in ("measured", "not_measured")
    assert v["memory"]["kv_cache"]["status"] == "estimated" and v["memory"]["peak_rss"]["status"] == "measured"
    assert v["batch_sweep"]["value"]["4"] > 0 and v["machine"]["cpu_count"] >= 1
    if v["energy"]["measured"]["status"] == "not_measured":
        assert any(x.startswith("energy/measured") for x in v["not_measured"])


def test_schema_rejects_an_untagged_or_unexplained_number(validated):
    r = json.loads((validated / "report.json").read_text())
    r["validation"]["energy"]["estimate"].pop("model")
    with pytest.raises(CllmError, match="energy/estimate"):
        check(r)
    r = json.loads((validated / "report.json").read_text())
    r["validation"]["memory"]["peak_rss"] = {"value": None, "unit": "bytes", "status": "not_measured"}
    with pytest.raises(CllmError, match="reason"):
        check(r)


def test_report_html_renders_in_headless_chromium_with_its_plots(validated, tmp_path):
    assert CHROMIUM, "Debian's chromium is needed (scripts/setup.sh installs it: apt-get install chromium)"
    html = (validated / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    assert html.count("data-plot=") == 4 and "estimated" in html and "Not measured" in html
    url = (validated / "report.html").as_uri()
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'u1'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-plots-loaded="4"' in dom  # every <img data-plot> decoded with a non-zero width
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'u2'}", "--window-size=1000,4200",
                    "--hide-scrollbars", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    import matplotlib.image as mpimg
    import numpy as np
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (4200, 1000)
    blue = np.abs(img - np.array([0x1f, 0x77, 0xb4]) / 255).sum(-1) < 0.08  # matplotlib's tab:blue
    red = (img[..., 0] > 0.9) & (img[..., 1] < 0.15) & (img[..., 2] < 0.15)  # this artifact's star
    assert blue.sum() > 2000 and red.sum() > 30


def test_cross_backend_check_fails_above_tolerance(validated, tmp_path):
    rc = validate_main([str(validated), "--backends", "torch,llama.cpp", "--tol-kld", "0", "--repeats", "2",
                        "--tokens", "64", "--out", str(tmp_path)])
    v = json.loads((tmp_path / "report.json").read_text())["validation"]
    (pair,) = v["equivalence"]["pairs"]
    assert rc == 1 and not v["equivalence"]["passed"] and v["equivalence"]["verdict"].startswith("fail")
    assert pair["kld_mean"] > 0 and not pair["pass"]
    assert v["equivalence"]["backends"]["tvm"]["reason"] == "not requested"


def test_registry_in_the_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLLM_CONFIG_DIR", str(tmp_path))
    assert load_registry() == {}
    (tmp_path / "devices.toml").write_text(
        '[devices.orin]\ntarget = "jetson-orin-nano-8gb"\ntransport = "tvm-rpc"\naddress = "rpc://10.0.0.5:9090"\n'
        'timeout_s = 30\npower_mode = "15W"\n[devices.lap]\ntransport = "ssh"\naddress = "me@lap"\n'
        '[devices.old]\nurl = "rpc://h:1"\n')
    reg = load_registry()
    assert reg["orin"].rpc()["port"] == 9090 and reg["orin"].timeout_s == 30 and reg["lap"].transport == "ssh"
    assert reg["old"].transport == "tvm-rpc"  # the earlier 'url' key still reads
    assert resolve("local") == Device("local") and resolve("ssh://u@h").address == "u@h"
    with pytest.raises(TargetError, match="not in"):
        resolve("xavier")
    for bad, msg in [('[devices.a]\ntransport = "usb"\naddress = "x"\n', "transport"),
                     ('[devices.a]\ntransport = "ssh"\n', "no address"),
                     ('[devices.a]\ncolour = "red"\n', "unknown key"), ("[devices\n", "not valid TOML")]:
        (tmp_path / "devices.toml").write_text(bad)
        with pytest.raises(TargetError, match=msg):
            load_registry()


def test_unreachable_device_still_writes_a_report(validated, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLLM_CONFIG_DIR", str(tmp_path))
    (tmp_path / "devices.toml").write_text('[devices.gone]\ntransport = "ssh"\naddress = "nobody@127.0.0.1"\n'
                                           'connect_timeout_s = 3\ntimeout_s = 5\n')
    rc = validate_main([str(validated), "--device", "gone", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "gone" in err and "Traceback" not in err
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    check(r)
    v = r["validation"]
    assert v["latency"]["device"]["status"] == "not_measured" and v["energy"]["estimate"]["status"] == "estimated"
    assert any("not reached" in x for x in v["not_measured"]) and "not measured" in (tmp_path / "r" / "report.html").read_text()


def test_plans_follow_the_target_facts():
    params, embed, kv = 134_515_008, 28_311_552, 2 * 30 * 3 * 64 * 2  # SmolLM2-135M
    plans = {t: plan(get_target(t), params, embed, kv) for t in ("x86-avx512", "gguf-cpu", "jetson-orin-nano-8gb")}
    assert len({p.pipeline for p in plans.values()}) == 3  # group 128 / Q4_1 blocks of 32 / group 64
    assert "group=32,zero=float" in plans["gguf-cpu"].pipeline and "group=64" in plans["jetson-orin-nano-8gb"].pipeline
    big = plan(get_target("jetson-orin-nano-8gb"), 8_000_000_000, 500_000_000, 2 * 32 * 8 * 128 * 2)
    assert big.budget_bpw is not None and 2 < big.budget_bpw < 3.5 and "allocate{budget=" in big.pipeline
    with pytest.raises(TargetError, match="does not fit"):
        plan(get_target("jetson-orin-nano-8gb"), 70_000_000_000, 1_000_000_000, 2 * 80 * 8 * 128 * 2)


def test_targets_compile_in_one_run_with_a_manifest(tiny_dir, tmp_path):
    out = tmp_path / "multi"
    rc = compile_main([str(tiny_dir), "--targets", "x86-avx512,gguf-cpu,jetson-orin-nano-8gb", "-o", str(out),
                       "--eval-windows", "0"])
    assert rc == 0
    man = json.loads((out / "manifest.json").read_text())
    arts = {a["target"]: a for a in man["artifacts"]}
    assert set(arts) == {"x86-avx512", "gguf-cpu", "jetson-orin-nano-8gb"}
    assert len({a["pipeline"] for a in arts.values()}) == 3 and all(a["plan"] for a in arts.values())
    from cllm_compiler.loading import file_sha256
    for a in arts.values():
        assert a["model_cllm_sha256"] == file_sha256(out / a["folder"] / "model.cllm")
        assert all(file_sha256(out / a["folder"] / f) == h for f, h in a["files"].items())
    assert man["calibration"]["shared"] and len(man["calibration"]["sha256"]) == 1
    notes = json.loads((out / "gguf-cpu" / "report.json").read_text())["notes"]
    assert any("calibration reused" in n for n in notes)
    assert (out / "gguf-cpu" / "model.gguf").is_file() and (out / "jetson-orin-nano-8gb" / "tvm" / "tvm.json").is_file()
    assert compile_main([str(tiny_dir), "--targets", "x86-avx512,gguf-cpu", "-o", str(out), "--eval-windows", "0"]) == 2


def test_triton_artifact_is_checked_interpreted_and_says_what_needs_a_gpu(tiny_dir, tmp_path):
    from cllm_compiler.validation.local import ValidateOptions, validate_local
    out = tmp_path / "h100"
    assert compile_main([str(tiny_dir), "-t", "h100", "-o", str(out), "--eval-windows", "0",
                         "-p", "quant{bits=4,group=64},entropy"]) == 0
    rec = validate_local(out, get_target("h100"), ValidateOptions(tokens=24, repeats=2, batches=(), peer=False,
                                                                  backends=("torch", "triton"), interpret_triton=True))
    (pair,) = rec["equivalence"]["pairs"]
    assert (pair["a"], pair["b"]) == ("torch", "triton") and pair["kld_mean"] < 1e-6 and rec["equivalence"]["passed"]
    assert rec["equivalence"]["backends"]["triton"]["runner"] == "Triton interpreter (CPU)"
    assert rec["latency"]["triton"]["status"] == "not_measured" and "CUDA" in rec["latency"]["triton"]["reason"]
    assert rec["energy"]["measured"]["status"] == "not_measured" and rec["energy"]["estimate"]["value"] > 0


FAKE_SSH = """#!/bin/bash
# stands in for OpenSSH: drops -o options and the host, runs the remote command here
while [ "$1" = "-o" ]; do shift 2; done
shift
exec bash -c "$*"
"""
FAKE_SCP = """#!/bin/bash
args=(); while [ $# -gt 0 ]; do case "$1" in -o) shift 2;; -q|-r) shift;; *) args+=("$1"); shift;; esac; done
cp -r "${args[0]}" "${args[1]#*:}"
"""


def test_ssh_transport_runs_the_local_validation_there(validated, tmp_path, monkeypatch):
    """The SSH path end to end with ssh/scp replaced by local stand-ins: the artifact is copied to
    the device's remote_dir, `cllm-validate --device local --json -` runs there, its JSON comes back."""
    import sys
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("scp", FAKE_SCP)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("CLLM_CONFIG_DIR", str(tmp_path))
    remote = tmp_path / "remote"
    (tmp_path / "devices.toml").write_text(
        f'[devices.box]\ntransport = "ssh"\naddress = "me@box"\nremote_dir = "{remote}"\n'
        f'remote_command = "{sys.executable} -m cllm_compiler.cli.validate"\ntimeout_s = 120\n')
    rc = validate_main([str(validated), "--device", "box", "--repeats", "2", "--tokens", "32",
                        "--backends", "torch,tvm", "--out", str(tmp_path / "r")])
    assert rc == 0
    assert (remote / validated.name / "model.cllm").is_file()  # copied to the device
    v = json.loads((tmp_path / "r" / "report.json").read_text())["validation"]
    assert v["device"]["name"] == "box" and v["device"]["transport"] == "ssh"
    assert v["latency"]["tvm"]["decode_ms_per_token"]["repeats"] == 2 and v["equivalence"]["passed"]


def test_compile_exits_1_when_validated_backends_disagree(capsys):
    from types import SimpleNamespace

    from cllm_compiler.cli.compile import _verdict
    ok = SimpleNamespace(out="a", report={"validation": {"equivalence": {"passed": True}}})
    bad = SimpleNamespace(out="b", report={"validation": {"equivalence": {"passed": False, "verdict": "fail: torch~tvm"}}})
    assert _verdict([ok]) == 0 and _verdict([SimpleNamespace(out="c", report={})]) == 0
    assert _verdict([ok, bad]) == 1 and "fail: torch~tvm" in capsys.readouterr().err
