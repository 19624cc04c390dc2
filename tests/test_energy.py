"""Energy readers on recorded sample outputs (tests/data/energy), the measured/estimated records
and what a failing or absent reader reports."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from cllm_compiler.energy import estimate, integrate, measure
from cllm_compiler.energy.jetson import (HwmonReader, TegrastatsReader, clocks_pinned, parse_nvpmodel,
                                         parse_tegrastats, total_of)
from cllm_compiler.energy.nvml import NvmlReader
from cllm_compiler.energy.rapl import RaplReader
from cllm_compiler.measure import distribution, machine_facts
from cllm_compiler.targets import get_target

DATA = Path(__file__).parent / "data" / "energy"


def test_tegrastats_orin_nano_lines_parse_to_rails():
    lines = (DATA / "tegrastats_orin_nano.txt").read_text().splitlines()
    first = parse_tegrastats(lines[0])
    assert first == {"VDD_IN": 5.263, "VDD_CPU_GPU_CV": 0.717, "VDD_SOC": 1.794}  # instant, not average
    assert total_of(parse_tegrastats(lines[1])) == (5.832, "VDD_IN")


def test_tegrastats_agx_orin_has_no_input_rail_so_rails_are_summed():
    rails = parse_tegrastats((DATA / "tegrastats_agx_orin.txt").read_text())
    assert set(rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    total, how = total_of(rails)
    assert how == "sum of rails" and total == pytest.approx(3.190 + 0.797 + 3.525 + 1.016)


def test_tegrastats_reader_integrates_a_streamed_recording():
    line = (DATA / "tegrastats_orin_nano.txt").read_text().splitlines()[0]
    fake = [sys.executable, "-u", "-c", f"import time\nwhile True:\n print({line!r}, flush=True)\n time.sleep(0.01)"]
    r = TegrastatsReader(command=fake)
    assert r.probe() is None
    rec, tokens = measure(lambda: (__import__("time").sleep(0.3), 10)[1], [r])
    assert rec["status"] == "measured" and tokens == 10 and "carrier board" in rec["meter"]
    assert rec["raw"]["mean_w"] == pytest.approx(5.263) and rec["raw"]["samples"] >= 5
    assert rec["value"] == pytest.approx(rec["joules"] / 10) and rec["joules"] == pytest.approx(5.263 * rec["seconds"], rel=0.05)


def test_hwmon_snapshot_reads_volts_times_amps_of_labelled_rails():
    r = HwmonReader(root=DATA / "hwmon_orin_nano")
    assert r.probe() is None
    rails = r.rails()
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}  # unlabelled channels 4-7 ignored
    assert rails["VDD_IN"] == pytest.approx(5.008 * 1.052)
    assert r.power_w()[0] == pytest.approx(rails["VDD_IN"])


def test_hwmon_missing_or_broken_says_why(tmp_path):
    assert "no INA3221" in HwmonReader().probe() or Path("/sys/bus/i2c/drivers/ina3221").exists()
    broken = tmp_path / "hw"
    shutil.copytree(DATA / "hwmon_orin_nano", broken)
    (broken / "in1_input").write_text("garbage")
    assert "cannot read" in HwmonReader(root=broken).probe()


def test_rapl_wraparound_adds_the_range_back(tmp_path):
    root = tmp_path / "powercap"
    shutil.copytree(DATA / "rapl_before", root)
    r = RaplReader(root)
    assert r.probe() is None and [z.name for z in r.zones()] == ["intel-rapl:0"]  # sub-zones excluded
    r.start()
    shutil.rmtree(root)
    shutil.copytree(DATA / "rapl_after", root)
    reading = r.stop()
    assert reading.raw["wrapped"] == {"intel-rapl:0:package-0": True}
    assert reading.raw["counter_deltas"]["intel-rapl:0:package-0"] == 262143328850 - 262140000000 + 6671150
    assert reading.joules == pytest.approx(10.0, rel=1e-9)  # 3,328,850 + 6,671,150 uJ


def test_rapl_absent_and_unreadable(tmp_path):
    assert "no RAPL zones" in RaplReader(tmp_path).probe()
    shutil.copytree(DATA / "rapl_before", tmp_path / "p")
    (tmp_path / "p" / "intel-rapl:0" / "energy_uj").write_text("")
    assert "cannot read" in RaplReader(tmp_path / "p").probe()


def test_nvml_replayed_counter_gives_joules_and_raw_deltas():
    doc = json.loads((DATA / "nvml_h100.json").read_text())
    reads = iter(doc["reads"])
    rec, _ = measure(lambda: 128, [NvmlReader(read_mj=lambda: next(reads))])
    delta = doc["reads"][1] - doc["reads"][0]
    assert rec["raw"]["counter_deltas"] == {"gpu0": delta} and rec["raw"]["unit_j"] == 1e-3
    assert rec["value"] == pytest.approx(delta / 1000 / 128)


def test_no_reader_means_not_measured_with_every_reason(tmp_path):
    rec, tokens = measure(lambda: 5, [RaplReader(tmp_path), HwmonReader(root=tmp_path / "none"),
                                      TegrastatsReader(command=["no-such-tegrastats"])])
    assert rec["status"] == "not_measured" and rec["value"] is None and tokens == 5
    assert "rapl" in rec["reason"] and "tegrastats" in rec["reason"] and "not found" in rec["reason"]


def test_reader_failing_mid_run_reports_it():
    r = TegrastatsReader(command=[sys.executable, "-c", "print('no rails here')"])
    rec, _ = measure(lambda: 3, [r])
    assert rec["status"] == "not_measured" and "failed while reading" in rec["reason"]


def test_estimate_is_labelled_with_its_model():
    t = get_target("jetson-orin-nano-8gb")
    rec = estimate(t, 100_000_000, "7W")
    assert rec["status"] == "estimated" and rec["power_mode"] == "7W"
    assert rec["value"] == pytest.approx(7 * 1e8 / 68e9)
    assert "68 GB/s" in rec["model"] and "7 W" in rec["model"]
    assert estimate(t, 100_000_000)["power_mode"] == max(t.extra["power_w"], key=t.extra["power_w"].get)


def test_integrate_trapezoid():
    assert integrate([(0.0, 2.0), (1.0, 4.0), (3.0, 4.0)], "m").joules == pytest.approx(3.0 + 8.0)


def test_nvpmodel_and_clock_facts(tmp_path):
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: 15W\n2\n") == "15W"
    assert parse_nvpmodel("") is None
    (tmp_path / "scaling_min_freq").write_text("1510400\n")
    (tmp_path / "scaling_max_freq").write_text("1510400\n")
    assert clocks_pinned(tmp_path) is True
    assert clocks_pinned(tmp_path / "x") is None


def test_distribution_and_machine_facts():
    d = distribution([10.0, 12.0, 11.0, 30.0] + [11.0] * 16, "ms", "perf_counter")
    assert d["repeats"] == 20 and d["p50"] == 11.0 and d["p95"] > d["p50"] and 0 < d["cv"] < 1
    f = machine_facts()
    assert f["cpu_count"] >= 1 and f["cpu_model"] and f["threads"] >= 1
