"""atheris fuzz target for the .cllm reader and every codec's decoder.

    pip install atheris
    python fuzz/fuzz_container.py -max_total_time=60 fuzz/corpus    # one command

Any exception other than cllm's ContainerError/CodecError is a crash; crashes found become
regression cases in tests/test_container_regressions.py. The seed corpus is built on first
run from tests/containers.py's small model.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from cllm_compiler import packing
    from cllm_compiler.codecs import CODECS, BufferSpec
    from cllm_compiler.container import read_container
    from cllm_compiler.errors import CodecError, ContainerError

_TMP = Path(tempfile.mkdtemp(prefix="cllm-fuzz-")) / "f.cllm"


def _reader(data: bytes) -> None:
    _TMP.write_bytes(data)
    try:
        for node in read_container(_TMP):
            node.rep.decode()
    except ContainerError:
        pass


def _codec(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    name = sorted(CODECS)[fdp.ConsumeIntInRange(0, len(CODECS) - 1)]
    bits = fdp.ConsumeIntInRange(1, 8)
    count = fdp.ConsumeIntInRange(1, 4096)
    kind = ["codes", "float", "bytes", "mask"][fdp.ConsumeIntInRange(0, 3)]
    spec = BufferSpec(kind, bits, count, {"float": "f16", "mask": ["2:4", "4:8", "1:4"][bits % 3]}.get(kind, ""))
    params = {"freq": [fdp.ConsumeIntInRange(0, 64) for _ in range(1 << bits)]} if name in ("rans", "nm-mask") else (
        {"bytegroup": fdp.ConsumeIntInRange(0, 5)} if fdp.ConsumeBool() else {})
    if name == "nm-mask":
        params.update(n=fdp.ConsumeIntInRange(1, 4), m=fdp.ConsumeIntInRange(2, 8))
    raw_len = (packing.packed_nbytes(count, bits) if kind == "codes" else
               packing.packed_nbytes(count, 1) if kind == "mask" else fdp.ConsumeIntInRange(0, 8192))
    try:
        CODECS[name].decode(fdp.ConsumeBytes(fdp.remaining_bytes()), raw_len, spec, params)
    except CodecError:
        pass


def test_one(data: bytes) -> None:
    if data[:1] == b"\x00":
        _codec(data[1:])
    else:
        _reader(data)


def _seed(corpus: Path) -> None:
    if corpus.exists() and any(corpus.iterdir()):
        return
    corpus.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.containers import small_file
    for seed in range(3):
        small_file(corpus / f"seed{seed}.cllm", seed=seed)


if __name__ == "__main__":
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        _seed(Path(dirs[0]))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
