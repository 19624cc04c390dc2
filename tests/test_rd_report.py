"""The per-tensor rate-distortion report of a calibrated compile, and `--budget` on the CLI."""
from __future__ import annotations

import json

from cllm_compiler.cli.compile import main as compile_main


def test_calibrated_compile_reports_rates_and_output_error(tiny_dir, tmp_path, capsys):
    out = tmp_path / "art"
    pipe = "calibrate{tokens=1024,seqlen=128},gptq{bits=3,group=64},quant{bits=6,match=embed|lm_head},entropy"
    assert compile_main([str(tiny_dir), "-p", pipe, "-o", str(out), "--eval-windows", "0"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["streamed"] is True  # calibration runs first, then tensors stream
    lin = [t for t in rep["tensors"] if "proj" in t["name"]]
    assert len(lin) == 14
    for t in lin:
        assert t["out_mse"] is not None and t["out_mse"] > 0 and t["sqnr_db"] > 5
        assert t["stored_bytes"] * 8 == t["bits"]
        assert t["entropy_bits"] <= t["bits"] + 64 * 8  # ideal order-0 size (+ tables) vs stored
        assert t["nominal_bits"] >= t["entropy_bits"] * 0.9
    assert (out / "calibration.safetensors").is_file()
    # file bits/weight is what the file holds, not the sum of tensor payloads
    size = (out / "model.cllm").stat().st_size
    assert rep["bits_per_weight"] == size * 8 / rep["params"]
    # a second compile into the same folder reuses the calibration
    first = (out / "model.cllm").read_bytes()
    assert compile_main([str(tiny_dir), "-p", pipe, "-o", str(out), "--eval-windows", "0", "--force"]) == 0
    rep2 = json.loads((out / "report.json").read_text())
    assert any("reused from cache" in n for n in rep2["notes"])
    assert (out / "model.cllm").read_bytes() == first  # same input and flags, same bytes


def test_cli_budget(tiny_dir, tmp_path, capsys):
    out = tmp_path / "b"
    assert compile_main([str(tiny_dir), "--budget", "5", "-o", str(out), "--eval-windows", "0"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert "allocate{budget=5.0" in rep["pipeline"]
    assert rep["bits_per_weight"] <= 5.0 + 1e-9 and rep["bits_per_weight"] > 4.6
    # --budget with a pipeline that has no allocator is refused before any work
    assert compile_main([str(tiny_dir), "--budget", "3", "-p", "quant", "-o", str(tmp_path / "c")]) == 2
    assert "allocate" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
