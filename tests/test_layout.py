"""The sibling folders install inside cllm_compiler and never shadow the standard library."""
import json
import os
import subprocess
import sys

PROBE = """
import importlib.util, json, sysconfig
import codecs
import cllm_compiler.codecs as ours
print(json.dumps({
    "stdlib_codecs": codecs.__file__.startswith(sysconfig.get_paths()["stdlib"]),
    "ours": ours.__name__, "zstd": "zstd" in ours.CODECS,
    "top_level": {n: importlib.util.find_spec(n) is not None for n in ("passes", "backends", "targets", "training")},
}))
"""


def test_installed_layout_from_another_folder(tmp_path):
    # Run outside the repo so the working directory cannot mask what the install provides.
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=""), timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["stdlib_codecs"] and d["ours"] == "cllm_compiler.codecs" and d["zstd"]
    assert not any(d["top_level"].values()), d["top_level"]


def test_console_scripts_declared():
    from importlib.metadata import entry_points
    names = {e.name for e in entry_points(group="console_scripts")}
    assert {"cllm-compile", "cllm-eval", "cllm-inspect"} <= names
