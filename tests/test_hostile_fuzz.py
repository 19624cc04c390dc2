"""Seeded hostile-input generators (tests/hostile_fuzz.py): >= 2,000 cases per run over GGUF
headers, Hugging Face folders and recipes; every one a clean CllmError or a model that loads and
decodes, none over 5 s, no crash. The seed changes per day so CI explores new cases over time;
CLLM_FUZZ_SEED reproduces a run."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

PER_FAMILY = int(os.environ.get("CLLM_FUZZ_CASES", "700"))


def test_generated_hostile_inputs_fail_cleanly(tmp_path):
    seed = int(os.environ.get("CLLM_FUZZ_SEED", datetime.date.today().strftime("%Y%m%d")))
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "tests.hostile_fuzz", str(seed), str(PER_FAMILY), str(out),
                           str(tmp_path / "work")], cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, f"the fuzz process died (seed {seed}): {proc.stderr[-3000:]}"
    summary = json.loads(out.read_text())
    assert sum(s["cases"] for s in summary.values()) >= 2000
    for fam, s in summary.items():
        assert not s["failures"], f"{fam}, seed {seed} (CLLM_FUZZ_SEED={seed} reproduces): {s['failures'][:5]}"
        assert s["slowest_s"] <= 5.0
        # Both outcomes occur: the generators reach past the first check, and still break things.
        assert s["refused"] > s["cases"] // 2 and s["loaded"] > 0, (fam, s)
