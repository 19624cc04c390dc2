"""Seeded mutation testing of the reader: every damaged file raises ContainerError, quickly."""
import time

import pytest

from cllm_compiler.container import FOOTER, PREFIX, read_container
from cllm_compiler.errors import CllmError, ContainerError
from tests.containers import flip, forge, rng, small_file, split


def _load_all(path):
    m = read_container(path)
    for node in m:
        node.rep.decode()
    return m


def _outcome(path, data):
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        _load_all(path)
        result = "loaded"
    except ContainerError:
        result = "container-error"
    except CllmError as e:  # any other cllm error type is a bug: the reader must say ContainerError
        result = f"wrong-error {type(e).__name__}: {e}"
    return result, time.perf_counter() - t0


def test_valid_file_loads(tmp_path):
    p = tmp_path / "ok.cllm"
    small_file(p)
    assert len(_load_all(p).tensors) == 4


def test_ten_thousand_mutations(tmp_path):
    """Truncations at every point, length edits, header and payload bit flips (unsigned)."""
    good = small_file(tmp_path / "good.cllm")
    hlen = int.from_bytes(good[24:32], "little")
    _, payload = split(good)
    pstart = len(good) - FOOTER.size - len(payload)
    r = rng(1234)
    cases: list[tuple[str, bytes]] = [("truncate", good[:n]) for n in range(len(good))]
    for _ in range(1000):  # length fields: prefix header_len and footer header_len
        choices = [0, 1, hlen - 1, hlen + 1, 2**63, 2**64 - 1, int(r.integers(0, 2**32))]
        v = choices[int(r.integers(0, len(choices)))]
        which = int(r.integers(0, 2))
        b = bytearray(good)
        off = 24 if which == 0 else len(good) - FOOTER.size
        b[off:off + 8] = v.to_bytes(8, "little")
        cases.append(("length", bytes(b)))
    for _ in range(2500):
        cases.append(("header-flip", flip(good, int(r.integers(0, (PREFIX.size + hlen) * 8)))))
    for _ in range(2500):
        cases.append(("payload-flip", flip(good, int(r.integers(pstart * 8, (len(good) - FOOTER.size) * 8)))))
    while len(cases) < 10_000:
        cases.append(("any-flip", flip(good, int(r.integers(0, len(good) * 8)))))
    counts: dict[str, int] = {}
    slowest = 0.0
    p = tmp_path / "m.cllm"
    for kind, data in cases:
        if data == good:
            continue
        result, dt = _outcome(p, data)
        slowest = max(slowest, dt)
        counts[f"{kind}:{result}"] = counts.get(f"{kind}:{result}", 0) + 1
        assert result == "container-error", (kind, result)
    assert sum(counts.values()) >= 10_000
    assert slowest < 1.0, slowest


def test_resigned_header_mutations_never_crash(tmp_path):
    """Bit flips inside the JSON, re-signed so they reach the parser and validator."""
    good = small_file(tmp_path / "good.cllm")
    h, _ = split(good)
    from cllm_compiler.container import canonical
    raw = canonical(h)
    r = rng(99)
    p = tmp_path / "m.cllm"
    seen = {"loaded": 0, "container-error": 0}
    for _ in range(1500):
        mutated = flip(raw, int(r.integers(0, len(raw) * 8)))
        result, dt = _outcome(p, forge(good, header=mutated))
        assert result in seen, result
        assert dt < 1.0
        seen[result] += 1
    assert seen["container-error"] > 1000  # most flips break the JSON or the schema


@pytest.mark.parametrize("n", [0, 5, 100])
def test_payload_flips_are_all_caught(tmp_path, n):
    good = small_file(tmp_path / "good.cllm", seed=n)
    _, payload = split(good)
    pstart = len(good) - FOOTER.size - len(payload)
    p = tmp_path / "m.cllm"
    for bit in range(pstart * 8, (len(good) - FOOTER.size) * 8, 97):
        assert _outcome(p, flip(good, bit))[0] == "container-error"
