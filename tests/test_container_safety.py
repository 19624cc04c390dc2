"""Path safety, injected write failures, and byte-identical output across runs."""
import errno
import json
import os
import subprocess
import sys

import pytest
import torch

import cllm_compiler.atomic as atomic
import cllm_compiler.container as container
from cllm_compiler.container import read_container, write_container
from cllm_compiler.errors import ContainerError, OutputError
from cllm_compiler.ir import TensorNode
from cllm_compiler.reprs import Dense
from tests.containers import small_model

HOSTILE = ["../x", "a/../../b", "/etc/x", "C:\\x", "a\x00b", "..", ".", ".hidden/../x", "a/b", "a\\b",
           "x\n", " lead", "trail ", "ü", "a" * 300, "", "a:b", "name*", "-", "a..b", "~root", "$HOME"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_tensor_names_are_refused(tmp_path, name):
    m = small_model()
    m.add(TensorNode(name, (2,), Dense((2,), "f32", data=torch.zeros(2))))
    out = tmp_path / "out"
    out.mkdir()
    before = set(tmp_path.rglob("*"))
    with pytest.raises(ContainerError, match="unsafe or invalid tensor name"):
        write_container(m, out / "m.cllm")
    assert set(tmp_path.rglob("*")) == before  # nothing written anywhere, no leftovers


def test_final_path_symlink_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.cllm").symlink_to(victim)
    write_container(small_model(), out / "m.cllm")
    assert victim.read_text() == "keep me" and not (out / "m.cllm").is_symlink()
    read_container(out / "m.cllm")


class _Faulty:
    """A file object that fails with `err` once `limit` bytes have been written."""

    def __init__(self, f, limit, err):
        self.f, self.limit, self.err, self.n = f, limit, err, 0

    def write(self, b):
        self.n += len(b)
        if self.n > self.limit:
            raise OSError(self.err, os.strerror(self.err))
        return self.f.write(b)

    def __getattr__(self, k):
        return getattr(self.f, k)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return self.f.__exit__(*a)


INJECT = [("spill", 100, errno.ENOSPC), ("spill", 1000, errno.EIO), ("spill", 2500, errno.ENOSPC),
          ("final", 10, errno.ENOSPC), ("final", 2000, errno.EIO), ("final", 5000, errno.ENOSPC),
          ("fsync", 0, errno.EIO), ("fsync", 0, errno.ENOSPC), ("replace", 0, errno.EIO), ("replace", 0, errno.EXDEV)]


@pytest.mark.parametrize("where,limit,err", INJECT)
def test_injected_write_failures_leave_nothing(tmp_path, monkeypatch, where, limit, err):
    real_open = open
    if where == "spill":
        monkeypatch.setattr(container, "open", lambda p, m: _Faulty(real_open(p, m), limit, err), raising=False)
    elif where == "final":
        monkeypatch.setattr(atomic, "open", lambda p, m: _Faulty(real_open(p, m), limit, err), raising=False)
    elif where == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(err, os.strerror(err))))
    else:
        monkeypatch.setattr(atomic.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(err, os.strerror(err))))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError) as e:
        write_container(small_model(), out / "m.cllm")
    assert str(out / "m.cllm") in e.value.format() and e.value.hint
    assert list(out.iterdir()) == []


def test_orphans_from_a_killed_writer_are_cleaned(tmp_path):
    (tmp_path / ".m.cllm.1234.spill").write_bytes(b"x" * 10)
    (tmp_path / ".m.cllm.abcd.tmp").write_bytes(b"y" * 10)
    (tmp_path / "keep.txt").write_text("mine")
    write_container(small_model(), tmp_path / "m.cllm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "m.cllm"]


DETERMINISM = """
import sys
from cllm_compiler.compiler import compile_model
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import get_target
compile_model(sys.argv[1], get_target("host"),
              parse_pipeline("quant{bits=3,group=64},quant{bits=8,match=embed},entropy{codec=auto}"), sys.argv[2])
"""


def test_bytes_identical_across_hashseed_threads_and_cwd(tiny_dir, tmp_path):
    outs = []
    for i, (seed, threads) in enumerate([("0", "1"), ("12345", "2"), ("random", "1")]):
        cwd = tmp_path / f"cwd{i}"
        cwd.mkdir()
        env = dict(os.environ, PYTHONHASHSEED=seed, OMP_NUM_THREADS=threads, CLLM_THREADS=threads)
        r = subprocess.run([sys.executable, "-c", DETERMINISM, str(tiny_dir), "art"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(cwd / "art")
    first = (outs[0] / "model.cllm").read_bytes()
    for o in outs[1:]:
        assert (o / "model.cllm").read_bytes() == first
        assert json.loads((o / "manifest.json").read_text())["model_cllm_sha256"] == \
            json.loads((outs[0] / "manifest.json").read_text())["model_cllm_sha256"]
