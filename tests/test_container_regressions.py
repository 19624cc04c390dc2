"""Hand-made hostile files, one per bug class in llama.cpp's GGUF CVE history (and ours).

Each is a correctly signed container whose header or payload says something impossible, so
the check under test is the validator, not the checksums.
"""
import json

import pytest

from cllm_compiler.container import END, FOOTER, read_container
from cllm_compiler.errors import ContainerError
from tests.containers import forge, small_file, split


def _t(h, i=1):
    return h["tensors"][i]


def _set(path, value):
    def edit(h):
        obj = h
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return edit


def _reshape_quant(h):
    t = next(t for t in h["tensors"] if t["rep"] == "quant")
    h["num_params"] += 64 * 96 - t["shape"][0] * t["shape"][1]
    t["shape"] = [64, 96]


CASES = {
    "huge-n-dims": (lambda h: _t(h).update(shape=[1] * 10_000), "at most 8 dims"),
    "dims-product-wraps-2^64": (lambda h: _t(h).update(shape=[2**32, 2**32, 16]), "more than"),
    "dims-product-over-limit": (lambda h: _t(h).update(shape=[2**24, 2**24, 2**24]), "more than"),
    "zero-dim": (lambda h: _t(h).update(shape=[0, 64]), "dimension = 0"),
    "negative-dim": (lambda h: _t(h).update(shape=[-1, 64]), "dimension = -1"),
    "padding-wraps-to-0": (lambda h: _t(h)["buffers"][0].update(offset=2**64 - 8), "offset"),
    "count-larger-than-bytes-left": (lambda h: _t(h)["buffers"][0].update(length=10**9), "buffer at payload offset"),
    "raw-length-huge": (lambda h: _t(h)["buffers"][0].update(raw_length=2**40), "raw_length"),
    "duplicate-tensor-names": (lambda h: _t(h).update(name=h["tensors"][0]["name"]), "duplicate tensor name"),
    "overlapping-buffers": (lambda h: _t(h)["buffers"][1].update(offset=_t(h)["buffers"][0]["offset"]), "overlaps"),
    "misaligned-offset": (lambda h: _t(h)["buffers"][1].update(offset=_t(h)["buffers"][1]["offset"] + 1), "misaligned"),
    "payload-length-lies": (_set(["payload_length"], 12), "payload length"),
    "name-dotdot": (lambda h: _t(h).update(name="../../etc/passwd"), "unsafe"),
    "name-slash": (lambda h: _t(h).update(name="a/b"), "unsafe"),
    "name-nul": (lambda h: _t(h).update(name="a\x00b"), "unsafe"),
    "name-empty": (lambda h: _t(h).update(name=""), "unsafe"),
    "unknown-codec": (lambda h: _t(h)["buffers"][0].update(codec="lzma"), "unknown codec"),
    "unknown-representation": (lambda h: _t(h).update(rep="gptq-packed"), "unknown representation"),
    "encoded-inside-encoded": (lambda h: _t(h).update(rep="encoded"), "unknown representation"),
    "bad-sha-format": (lambda h: _t(h)["buffers"][0].update(sha256="zz"), "sha256"),
    "num-params-lies": (lambda h: h.update(num_params=h["num_params"] + 1), "num_params"),
    "rans-table-sum-lies": (lambda h: next(b for t in h["tensors"] for b in t["buffers"] if b["codec"] == "rans")
                            ["params"].update(freq=[1] * 16), "frequency table"),
    "quant-group-zero": (lambda h: next(t for t in h["tensors"] if t["rep"] == "quant")["meta"].update(group=0),
                         "out of range"),
    "quant-bits-nine": (lambda h: next(t for t in h["tensors"] if t["rep"] == "quant")["meta"].update(bits=9),
                        "frequency table"),
    "shape-disagrees-with-buffers": (_reshape_quant, "frequency table"),
    "missing-field": (lambda h: _t(h).pop("buffers"), "lacks"),
    "config-missing": (lambda h: h.update(config={}), "config"),
    "tokenizer-raw-length-huge": (lambda h: h["tokenizer"].update(raw_length=2**40), "tokenizer raw_length"),
    "string-for-int": (lambda h: _t(h)["buffers"][0].update(length="12"), "length"),
    "bool-for-int": (lambda h: _t(h)["buffers"][0].update(offset=True), "offset"),
}

RAW_HEADERS = {
    "non-json": (b"this is not json", "not valid JSON"),
    "non-utf8": (b'{"format":"cllm","x":"\xff\xfe"}', "not valid JSON"),
    "nesting-10000-deep": (b'{"format":"cllm","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nests too deeply"),
    "duplicate-keys": (b'{"format":"cllm","format":"cllm"}', "duplicate key"),
    "empty-key": (b'{"format":"cllm","":1}', "empty"),
    "float-value": (b'{"format":"cllm","x":1.5}', "integers only"),
    "nan-value": (b'{"format":"cllm","x":NaN}', "integers only"),
    "not-an-object": (b"[1,2,3]", "not a cllm header"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return small_file(tmp_path_factory.mktemp("reg") / "good.cllm")


def _expect(tmp_path, data, needle):
    p = tmp_path / "bad.cllm"
    p.write_bytes(data)
    with pytest.raises(ContainerError) as e:
        m = read_container(p)
        for n in m:
            n.rep.decode()
    assert needle in e.value.format(), e.value.format()
    return e.value


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_header_fields(case, good, tmp_path):
    edit, needle = CASES[case]
    _expect(tmp_path, forge(good, edit), needle)


@pytest.mark.parametrize("case", sorted(RAW_HEADERS))
def test_hostile_header_bytes(case, good, tmp_path):
    raw, needle = RAW_HEADERS[case]
    _expect(tmp_path, forge(good, header=raw), needle)


def test_hole_between_buffers(good, tmp_path):
    h, payload = split(good)
    at = h["tokenizer"]["offset"]
    h["tokenizer"]["offset"] += 64
    h["payload_length"] += 64
    from cllm_compiler.container import canonical
    data = forge(good, header=canonical(h), payload=payload[:at] + b"\0" * 64 + payload[at:])
    _expect(tmp_path, data, "leaves a hole")


def test_framing(good, tmp_path):
    _expect(tmp_path, forge(good, required=1 << 5), "unknown required feature")
    _expect(tmp_path, forge(good, version=99), "version 99")
    _expect(tmp_path, b"GGUF" + good[4:], "bad magic")
    _expect(tmp_path, good + b"\0", "footer")
    _expect(tmp_path, good[:-FOOTER.size] + FOOTER.pack(1, b"\0" * 32, END), "footer")
    big = bytearray(good)
    big[24:32] = (len(good) * 2).to_bytes(8, "little")  # header longer than the file
    _expect(tmp_path, bytes(big), "header length")
    # Footer hash mismatch: damage alignment padding (covered only by the whole-file hash).
    h, payload = split(good)
    pad_at = next(i for i in range(len(payload)) if payload[i] == 0 and i % 64 == 63)
    p = bytearray(payload)
    p[pad_at] = 1
    resigned = bytearray(forge(good))
    resigned[len(good) - 48 - len(payload) + pad_at] = 1
    _expect(tmp_path, bytes(resigned), "checksum")
    assert len(CASES) + len(RAW_HEADERS) + 8 >= 25
