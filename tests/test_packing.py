import numpy as np
import pytest

from cllm_compiler import packing


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4099])
def test_roundtrip(bits, n):
    rng = np.random.default_rng(bits * 1000 + n)
    codes = rng.integers(0, 1 << bits, size=n, dtype=np.uint8)
    data = packing.pack(codes, bits)
    assert len(data) == packing.packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert np.array_equal(packing.unpack(data, bits, n), codes)


def test_chunk_boundary(monkeypatch):
    monkeypatch.setattr(packing, "_CHUNK", 16)
    codes = np.arange(101, dtype=np.uint8) % 8
    assert np.array_equal(packing.unpack(packing.pack(codes, 3), 3, 101), codes)


def test_rejects_overflow_and_bad_length():
    with pytest.raises(ValueError):
        packing.pack(np.array([16], dtype=np.uint8), 4)
    with pytest.raises(ValueError):
        packing.unpack(b"\x00", 4, 5)
