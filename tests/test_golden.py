"""Ten golden tensors: the committed file must keep decoding to the pinned sha256s."""
import hashlib
import json
import os
from pathlib import Path

from cllm_compiler.container import read_container, write_container
from tests.make_golden import build, digests

DATA = Path(__file__).parent / "data"


def test_committed_golden_file_decodes_to_pinned_hashes():
    pinned = json.loads((DATA / "golden.json").read_text())
    assert len(pinned) == 10
    assert digests(read_container(DATA / "golden.cllm")) == pinned


def test_encoder_still_writes_the_golden_bytes(tmp_path):
    write_container(build(), tmp_path / "g.cllm")
    assert (tmp_path / "g.cllm").read_bytes() == (DATA / "golden.cllm").read_bytes()
    assert oct(os.stat(tmp_path / "g.cllm").st_mode & 0o777) != "0o600"  # published, not mkstemp's mode


def test_golden_kinds_cover_the_formats():
    m = read_container(DATA / "golden.cllm")
    kinds = " ".join(n.rep.describe() for n in m)
    for needle in ("int2", "int3", "int4", "int5", "int6", "int8", "fmin", "sym", "bf16", "f16", "f32", "rans", "zstd"):
        assert needle in kinds, needle
    assert hashlib.sha256((DATA / "golden.cllm").read_bytes()).hexdigest()
