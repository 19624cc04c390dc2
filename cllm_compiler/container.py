"""The .cllm container, version 2 — the reader and writer follow docs/container.md exactly.

    prefix  64 B   "CLLM" u16 version u16 0 u64 required-features u64 optional-features
                   u64 header_len sha256(header)
    header         canonical JSON (sorted keys, no floats), zero-padded to 64 B
    payload        buffers at 64-byte-aligned offsets, contiguous, zero padding between
    footer  48 B   u64 header_len sha256(every byte before the footer) "CLLMEND\\0"

Every length is checked against the bytes that exist before anything is allocated or looped
over; every failure is a ContainerError naming the tensor and offset.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any, Callable, Iterable

from . import container_schema as schema
from .atomic import atomic_file, clean_orphans, os_error
from .errors import CodecError, ContainerError
from .ir import Model, ModelConfig, TensorNode, TokenizerSpec
from .reprs import Coded, Encoded, Representation, coded_buffers, rep_from_coded

MAGIC, END, VERSION, ALIGN = b"CLLM", b"CLLMEND\0", 2, 64
PREFIX = struct.Struct("<4sHHQQQ32s")
FOOTER = struct.Struct("<Q32s8s")
KNOWN_REQUIRED = 0  # no required feature bits are defined yet: any set bit is unknown


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _pad(n: int) -> int:
    return (-n) % ALIGN


def write_container(model: Model, path: Path, progress: Callable[[str], None] | None = None,
                    nodes: Iterable[TensorNode] | None = None) -> int:
    """Write `model` atomically, tensor by tensor through a spill file; return the file size.

    The payload goes to a spill file first because the header (which needs every offset)
    precedes it; memory stays bounded by one tensor. `nodes` (default: the model's tensors)
    may be a generator that compresses each tensor just before it is written.
    """
    path = Path(path)
    clean_orphans(path)
    spill = path.with_name(f".{path.name}.{os.getpid()}.spill")
    try:
        with open(spill, "wb") as f:
            records, tok, off = _write_payload(model, nodes if nodes is not None else model, f, progress)
        header = canonical({"format": "cllm", "version": VERSION, "config": schema.config_to_json(model.config),
                            "tokenizer": tok, "tensors": records, "payload_length": off,
                            "num_params": model.num_params, "source": portable_source(model.source)})
        return _assemble(path, header, spill)
    except OSError as e:
        raise os_error(e, path) from e
    finally:
        spill.unlink(missing_ok=True)


def record_nbytes(node: TensorNode) -> int:
    """Bytes `node` will add to a container: payload, alignment (on average) and header record.
    Lets the allocator budget whole-file bits before anything is written."""
    kind, meta, coded = coded_buffers(node.rep)
    bufs = [{"name": n, "codec": c.codec, "params": c.params, "offset": 10**8, "length": len(c.data),
             "raw_length": c.raw_len, "sha256": "0" * 64, "raw_sha256": "0" * 64} for n, c in coded.items()]
    rec = {"name": node.name, "shape": list(node.shape), "role": node.role, "rep": kind, "meta": meta, "buffers": bufs}
    return sum(len(c.data) + ALIGN // 2 for c in coded.values()) + len(canonical(rec)) + 1


def fixed_nbytes(model: Model) -> int:
    """Container bytes that do not belong to any tensor: prefix, footer, tokenizer, header skeleton."""
    import zstandard
    tok = 0
    if model.tokenizer is not None:
        tok = len(zstandard.ZstdCompressor(level=19, threads=0).compress(model.tokenizer.tokenizer_json.encode()))
        tok += 400 + len(canonical(model.tokenizer.chat_template or ""))
    skeleton = canonical({"format": "cllm", "version": VERSION, "config": schema.config_to_json(model.config),
                          "tensors": [], "payload_length": 10**9, "num_params": model.num_params,
                          "source": portable_source(model.source)})
    return PREFIX.size + FOOTER.size + tok + len(skeleton) + ALIGN


def portable_source(source: dict[str, Any]) -> dict[str, Any]:
    """What the container records of the source: its hash and file name, never a local path,
    so the same model compiled from two folders gives the same bytes (the manifest has the path)."""
    out = {k: source[k] for k in ("format", "sha256") if k in source}
    if source.get("path"):
        out["name"] = Path(source["path"]).name
    return out


def _write_payload(model: Model, nodes: Iterable[TensorNode], f: Any,
                   progress: Callable[[str], None] | None) -> tuple[list, dict | None, int]:
    import zstandard
    records: list[dict[str, Any]] = []
    off = 0

    def put(data: bytes) -> int:
        nonlocal off
        f.write(b"\0" * _pad(off))
        off += _pad(off)
        start = off
        f.write(data)
        off += len(data)
        return start

    stored: dict[tuple[str, int], int] = {}  # identical buffers (a shared codebook) are stored once

    def put_once(data: bytes, digest: str) -> int:
        if (digest, len(data)) not in stored:
            stored[(digest, len(data))] = put(data)
        return stored[(digest, len(data))]

    for node in nodes:
        schema.check_name(node.name)
        kind, meta, coded = coded_buffers(node.rep)
        bufs = []
        for bname, c in coded.items():
            digest = hashlib.sha256(c.data).hexdigest()
            bufs.append({"name": bname, "codec": c.codec, "params": c.params, "offset": put_once(c.data, digest),
                         "length": len(c.data), "raw_length": c.raw_len, "sha256": digest,
                         "raw_sha256": c.raw_sha256 or hashlib.sha256(c.data).hexdigest()})
        records.append({"name": node.name, "shape": list(node.shape), "role": node.role, "rep": kind,
                        "meta": meta, "buffers": bufs})
        if progress:
            progress(node.name)
    tok = None
    if model.tokenizer is not None:
        raw = model.tokenizer.tokenizer_json.encode()
        blob = zstandard.ZstdCompressor(level=19, threads=0).compress(raw)
        tok = {"offset": put(blob), "length": len(blob), "raw_length": len(raw), "codec": "zstd",
               "sha256": hashlib.sha256(blob).hexdigest(), "raw_sha256": hashlib.sha256(raw).hexdigest(),
               "add_bos": model.tokenizer.add_bos, "chat_template": model.tokenizer.chat_template}
    return records, tok, off


def _assemble(path: Path, header: bytes, spill: Path) -> int:
    if len(header) > schema.MAX_HEADER:
        raise ContainerError(f"header would be {len(header)} bytes, over the {schema.MAX_HEADER} limit",
                             hint="too many tensors for one container")
    digest = hashlib.sha256()
    with atomic_file(path) as f:
        def put(b: bytes) -> None:
            digest.update(b)
            f.write(b)
        put(PREFIX.pack(MAGIC, VERSION, 0, 0, 0, len(header), hashlib.sha256(header).digest()))
        put(header + b"\0" * _pad(PREFIX.size + len(header)))
        with open(spill, "rb") as s:
            for block in iter(lambda: s.read(1 << 22), b""):
                put(block)
        f.write(FOOTER.pack(len(header), digest.digest(), END))
        size = f.tell()
    return size


class ContainerFile:
    """A parsed, bounds-checked .cllm file with random access to each tensor's buffers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < PREFIX.size + FOOTER.size:
                    raise ContainerError(f"file is {size} bytes, too short for a .cllm", offset=0,
                                         hint="it is truncated or not a .cllm file")
                self.data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ContainerError(f"cannot open {self.path}: {e.strerror or e}", hint="check the path") from e
        self.size = size
        self.header = self._parse()

    def _parse(self) -> dict[str, Any]:
        d, n = self.data, self.size
        magic, version, _, required, _, hlen, hsha = PREFIX.unpack_from(d, 0)
        if magic != MAGIC:
            raise ContainerError("bad magic: not a .cllm file", offset=0, hint="is this a GGUF/safetensors file?")
        if version != VERSION:
            raise ContainerError(f"container version {version} is not supported (this cllm reads {VERSION})",
                                 offset=4, hint="recompile with this cllm, or upgrade cllm")
        if required & ~KNOWN_REQUIRED:
            raise ContainerError(f"unknown required feature flags {required:#x}", offset=8,
                                 hint="written by a newer cllm; upgrade cllm")
        if not 2 <= hlen <= min(schema.MAX_HEADER, n - PREFIX.size - FOOTER.size):
            raise ContainerError(f"header length {hlen} is impossible for a {n}-byte file", offset=24,
                                 hint="the file is truncated or damaged")
        flen, _, end = FOOTER.unpack_from(d, n - FOOTER.size)
        if end != END or flen != hlen:
            raise ContainerError("footer missing or disagrees with the prefix", offset=n - FOOTER.size,
                                 hint="the file is truncated or was not fully written")
        raw = bytes(d[PREFIX.size:PREFIX.size + hlen])
        if hashlib.sha256(raw).digest() != hsha:
            raise ContainerError("header checksum mismatch", offset=PREFIX.size, hint="the file is damaged; recompile it")
        header = schema.parse_header(raw, PREFIX.size)
        self.payload_start = PREFIX.size + hlen + _pad(PREFIX.size + hlen)
        schema.validate(header, self.payload_start, n - FOOTER.size, ALIGN)
        return header

    def verify(self) -> list[str]:
        """Check every buffer's hash (naming a damaged tensor), then the whole-file hash."""
        for rec in self.header["tensors"]:
            self.rep(rec)
        self.tokenizer()
        self.check_file_hash()
        return [r["name"] for r in self.header["tensors"]]

    def check_file_hash(self) -> None:
        """Compare the footer's hash with every byte before it (covers padding and prefix)."""
        digest = hashlib.sha256()
        end = self.size - FOOTER.size
        for start in range(0, end, 1 << 22):
            digest.update(self.data[start:min(end, start + (1 << 22))])
        if digest.digest() != FOOTER.unpack_from(self.data, end)[1]:
            raise ContainerError("file checksum mismatch outside any tensor (padding or prefix damaged)",
                                 offset=end, hint="the file is damaged; recompile it")

    def _stored(self, buf: dict[str, Any], tensor: str) -> bytes:
        start = self.payload_start + buf["offset"]
        data = bytes(self.data[start:start + buf["length"]])
        if hashlib.sha256(data).hexdigest() != buf["sha256"]:
            raise ContainerError(f"sha256 mismatch: payload bytes of buffer '{buf.get('name', 'data')}' are damaged",
                                 tensor=tensor, offset=start, hint="the artifact is corrupt; recompile it")
        return data

    def coded(self, rec: dict[str, Any]) -> dict[str, Coded]:
        return {b["name"]: Coded(b["codec"], b["raw_length"], self._stored(b, rec["name"]), b["params"],
                                 b["raw_sha256"]) for b in rec["buffers"]}

    def rep(self, rec: dict[str, Any], check_decode: bool = True) -> Representation:
        """The tensor's representation; with `check_decode`, codecs run once now so that a
        damaged or hostile record fails here, as a ContainerError, not later in a backend."""
        try:
            rep = rep_from_coded(rec["rep"], rec["meta"], self.coded(rec), tuple(rec["shape"]), rec["name"])
            if isinstance(rep, Encoded):
                if check_decode:
                    rep.inner()
            elif any(b["raw_sha256"] != b["sha256"] for b in rec["buffers"]):
                raise ContainerError("raw buffer hashes disagree", tensor=rec["name"])
            return rep
        except ContainerError:
            raise
        except (CodecError, KeyError, ValueError, TypeError, ZeroDivisionError, OverflowError, MemoryError) as e:
            msg = e.message if isinstance(e, CodecError) else f"malformed '{rec['rep']}' record: {e!r}"
            raise ContainerError(msg, tensor=rec["name"], hint="the artifact is damaged or hostile") from e

    def tokenizer(self) -> TokenizerSpec | None:
        t = self.header.get("tokenizer")
        if not t:
            return None
        import zstandard
        blob = self._stored(t, "<tokenizer>")
        try:
            raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=t["raw_length"])
            if hashlib.sha256(raw).hexdigest() != t["raw_sha256"]:
                raise ContainerError("tokenizer decodes to bytes that fail their sha256", tensor="<tokenizer>")
            return TokenizerSpec(raw.decode("utf-8"), add_bos=t["add_bos"], chat_template=t["chat_template"])
        except (zstandard.ZstdError, UnicodeDecodeError) as e:
            raise ContainerError(f"tokenizer does not decode: {e}", tensor="<tokenizer>",
                                 hint="the artifact is corrupt") from e


def read_container(path: Path, verify: bool = True) -> Model:
    cf = ContainerFile(path)
    config = schema.config_from_json(cf.header["config"])
    model = Model(config, cf.tokenizer(), source=dict(cf.header["source"], artifact=str(path)))
    for rec in cf.header["tensors"]:  # rep() checks each buffer's hashes and runs its codecs once
        model.add(TensorNode(rec["name"], tuple(rec["shape"]), cf.rep(rec), role=rec["role"]))
    if verify:
        cf.check_file_hash()
    return model


__all__ = ["ContainerFile", "ModelConfig", "read_container", "write_container", "canonical"]
