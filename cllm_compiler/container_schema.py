"""Strict parsing and validation of the .cllm header (see docs/container.md).

Nothing from the file is trusted: JSON is parsed with duplicate/empty keys, floats, NaN
and deep nesting rejected; every field is type- and range-checked; buffer extents must tile
the payload in order (64-byte aligned, no overlaps, no holes beyond alignment padding).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from .errors import ContainerError
from .ir import ModelConfig

MAX_HEADER = 16 * 2**20
MAX_DIMS, MAX_DIM, MAX_NUMEL = 8, 2**40, 2**48
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_name(name: Any) -> str:
    """Tensor names are plain dotted identifiers: no separators, no '..', no control bytes."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ContainerError(f"unsafe or invalid tensor name {name!r}",
                             hint="names match [A-Za-z0-9_][A-Za-z0-9_.-]* without '..'")
    return name


def config_to_json(cfg: ModelConfig) -> dict[str, Any]:
    # The header holds no floats (exact, canonical bytes): floats travel as repr strings.
    return {k: repr(v) if isinstance(v, float) else v for k, v in cfg.to_dict().items()}


def config_from_json(d: Any) -> ModelConfig:
    if not isinstance(d, dict):
        raise ContainerError("config record is not an object")
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    try:
        kw = {k: float(v) if fields[k].type == "float" else v for k, v in d.items()}
        return ModelConfig(**kw)
    except (KeyError, TypeError, ValueError) as e:
        raise ContainerError(f"config record is malformed: {e}", hint="the artifact is damaged") from e


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in items]
    if "" in keys or len(set(keys)) != len(keys):
        raise ValueError("empty or duplicate key")
    return dict(items)


def _no_float(text: str) -> Any:
    raise ValueError(f"float {text!r} in header (headers hold integers only)")


def parse_header(raw: bytes, offset: int) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs, parse_float=_no_float,
                         parse_constant=_no_float)
    except RecursionError:
        raise ContainerError("header nests too deeply", offset=offset, hint="the file is hostile or damaged") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ContainerError(f"header is not valid JSON: {e}", offset=offset, hint="the file is damaged") from e
    if not isinstance(doc, dict) or doc.get("format") != "cllm":
        raise ContainerError("header is not a cllm header", offset=offset)
    return doc


def _int(v: Any, what: str, lo: int = 0, hi: int = 2**62, tensor: str | None = None) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ContainerError(f"{what} = {v!r} is not an integer in [{lo}, {hi}]", tensor=tensor)
    return v


def _obj(v: Any, what: str, keys: tuple[str, ...], tensor: str | None = None) -> dict[str, Any]:
    if not isinstance(v, dict) or any(k not in v for k in keys):
        raise ContainerError(f"{what} lacks one of {', '.join(keys)}", tensor=tensor)
    return v


_BUF = ("name", "codec", "params", "offset", "length", "raw_length", "sha256", "raw_sha256")


def _buffer(b: Any, tensor: str, numel: int) -> dict[str, Any]:
    from .codecs import CODECS
    b = _obj(b, "buffer record", _BUF, tensor)
    if not isinstance(b["name"], str) or not NAME_RE.fullmatch(b["name"]):
        raise ContainerError(f"bad buffer name {b['name']!r}", tensor=tensor)
    if b["codec"] not in CODECS or not isinstance(b["params"], dict):
        raise ContainerError(f"unknown codec {b['codec']!r}", tensor=tensor, hint=f"known: {', '.join(CODECS)}")
    for k in ("sha256", "raw_sha256"):
        if not isinstance(b[k], str) or not _HEX64.fullmatch(b[k]):
            raise ContainerError(f"{k} is not a sha256 hex digest", tensor=tensor)
    _int(b["offset"], "offset", tensor=tensor)
    _int(b["length"], "length", tensor=tensor)
    # Decoded sizes are bounded by the tensor: at most 8 bytes per element plus slack.
    _int(b["raw_length"], "raw_length", 0, 8 * max(numel, 1) + 4096, tensor)
    return b


def _tensor(rec: Any, seen: set[str]) -> list[dict[str, Any]]:
    rec = _obj(rec, "tensor record", ("name", "shape", "role", "rep", "meta", "buffers"))
    name = check_name(rec["name"])
    if name in seen:
        raise ContainerError("duplicate tensor name", tensor=name)
    seen.add(name)
    shape = rec["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise ContainerError(f"shape must be a list of at most {MAX_DIMS} dims", tensor=name)
    numel = 1
    for d in shape:
        numel *= _int(d, "dimension", 1, MAX_DIM, name)
        if numel > MAX_NUMEL:
            raise ContainerError(f"tensor has more than {MAX_NUMEL} elements", tensor=name)
    if not isinstance(rec["rep"], str) or not isinstance(rec["meta"], dict) or not isinstance(rec["role"], str):
        raise ContainerError("rep/meta/role have the wrong types", tensor=name)
    if not isinstance(rec["buffers"], list) or len(rec["buffers"]) > 16:
        raise ContainerError("buffers must be a list of at most 16", tensor=name)
    bufs = [_buffer(b, name, numel) for b in rec["buffers"]]
    if len({b["name"] for b in bufs}) != len(bufs):
        raise ContainerError("duplicate buffer name", tensor=name)
    return bufs


def validate(h: dict[str, Any], payload_start: int, payload_end: int, align: int) -> None:
    _obj(h, "header", ("version", "config", "tokenizer", "tensors", "payload_length", "num_params", "source"))
    if not isinstance(h["tensors"], list) or not isinstance(h["source"], dict):
        raise ContainerError("tensors/source have the wrong types")
    plen = _int(h["payload_length"], "payload_length")
    if payload_start + plen != payload_end:
        raise ContainerError(f"payload length {plen} disagrees with the file size", offset=payload_start,
                             hint="the file is truncated or has trailing bytes")
    extents: list[tuple[int, int, str]] = []
    shared: dict[tuple[int, int], str] = {}  # (offset, length) -> sha256: identical buffers may share one extent
    seen: set[str] = set()
    for rec in h["tensors"]:
        for b in _tensor(rec, seen):
            key = (b["offset"], b["length"])
            if key in shared:
                if shared[key] != b["sha256"]:
                    raise ContainerError(f"buffer at payload offset {b['offset']} is shared with different hashes",
                                         tensor=rec["name"], offset=payload_start + b["offset"],
                                         hint="the file is damaged or hostile")
                continue
            shared[key] = b["sha256"]
            extents.append((b["offset"], b["length"], rec["name"]))
    total = sum(math.prod(r["shape"]) for r in h["tensors"])
    if _int(h["num_params"], "num_params") != total:
        raise ContainerError(f"num_params {h['num_params']} != sum of tensor sizes {total}")
    if h["tokenizer"] is not None:
        t = _obj(h["tokenizer"], "tokenizer record", ("offset", "length", "raw_length", "sha256", "raw_sha256",
                                                     "add_bos", "chat_template", "codec"))
        _int(t["raw_length"], "tokenizer raw_length", 0, 256 * 2**20)
        if not isinstance(t["add_bos"], bool) or not isinstance(t["chat_template"], (str, type(None))):
            raise ContainerError("tokenizer record has the wrong types")
        extents.append((_int(t["offset"], "offset"), _int(t["length"], "length"), "<tokenizer>"))
    config_from_json(h["config"])
    _check_tiling(extents, plen, payload_start, align)


def _check_tiling(extents: list[tuple[int, int, str]], plen: int, start: int, align: int) -> None:
    pos = 0
    for off, length, name in sorted(extents):
        expect = pos + (-pos) % align
        if off != expect:
            kind = "overlaps the previous buffer" if off < pos else ("is misaligned" if off % align else "leaves a hole")
            raise ContainerError(f"buffer at payload offset {off} {kind} (expected {expect})",
                                 tensor=name, offset=start + off, hint="the file is damaged or hostile")
        pos = off + length
    if pos != plen:
        raise ContainerError(f"buffers end at {pos}, payload is {plen} bytes", offset=start + pos,
                             hint="the file is damaged or hostile")
