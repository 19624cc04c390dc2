"""The .cllm container, version 1.

Layout (little-endian)::

    "CLLM" u16 version u16 flags            8 bytes
    payload                                 tensor buffers back to back
    header                                  canonical JSON (sorted keys)
    u64 header_len, sha256(header), "CLLMEND\\0"   48-byte trailer

The header sits at the end so the payload streams to disk tensor by tensor. Each tensor
record holds its representation meta, buffer offsets (relative to the payload start) and a
sha256 over its record and bytes, so a flipped byte is reported with the tensor's name.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import struct
from pathlib import Path
from typing import Any, Callable, Iterable

from .atomic import atomic_file
from .errors import ContainerError
from .ir import Model, ModelConfig, TensorNode, TokenizerSpec
from .reprs import Representation, rep_from_record

MAGIC, END = b"CLLM", b"CLLMEND\0"
VERSION = 1
PREFIX = struct.Struct("<4sHH")
TRAILER = struct.Struct("<Q32s8s")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(rec: dict[str, Any], bufs: Iterable[bytes]) -> str:
    h = hashlib.sha256(canonical({k: rec[k] for k in ("name", "shape", "kind", "meta")}))
    for b in bufs:
        h.update(b)
    return h.hexdigest()


def write_container(model: Model, path: Path, progress: Callable[[str], None] | None = None) -> int:
    """Write `model` to `path` atomically; return the file size in bytes."""
    import zstandard
    records, offset = [], 0
    with atomic_file(Path(path)) as f:
        f.write(PREFIX.pack(MAGIC, VERSION, 0))
        for node in model:
            meta, bufs = node.rep.to_record()
            rec: dict[str, Any] = {"name": node.name, "shape": list(node.shape), "kind": node.rep.kind,
                                   "meta": meta, "role": node.role, "buffers": []}
            for bname, data in bufs.items():
                f.write(data)
                rec["buffers"].append({"name": bname, "offset": offset, "length": len(data)})
                offset += len(data)
            rec["sha256"] = record_hash(rec, bufs.values())
            records.append(rec)
            if progress:
                progress(node.name)
        tok = None
        if model.tokenizer is not None:
            blob = zstandard.ZstdCompressor(level=19, threads=0).compress(model.tokenizer.tokenizer_json.encode())
            f.write(blob)
            tok = {"offset": offset, "length": len(blob), "raw_len": len(model.tokenizer.tokenizer_json.encode()),
                   "sha256": hashlib.sha256(blob).hexdigest(), "add_bos": model.tokenizer.add_bos,
                   "chat_template": model.tokenizer.chat_template}
            offset += len(blob)
        header = canonical({"format": "cllm", "version": VERSION, "config": model.config.to_dict(),
                            "tokenizer": tok, "tensors": records, "payload_len": offset,
                            "num_params": model.num_params, "source": model.source})
        f.write(header)
        f.write(TRAILER.pack(len(header), hashlib.sha256(header).digest(), END))
        size = f.tell()
    return size


class ContainerFile:
    """A parsed .cllm file: header plus access to verified tensor buffers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                self.data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ContainerError(f"cannot open {self.path}: {e}", hint="is it a .cllm file?") from e
        self.header = self._parse()

    def _parse(self) -> dict[str, Any]:
        d, n = self.data, len(self.data)
        if n < PREFIX.size + TRAILER.size:
            raise ContainerError(f"file is {n} bytes, too short for a .cllm", offset=0, hint="it is truncated")
        magic, version, _ = PREFIX.unpack_from(d, 0)
        if magic != MAGIC:
            raise ContainerError("bad magic: not a .cllm file", offset=0)
        if version != VERSION:
            raise ContainerError(f"container version {version} is not supported (this cllm reads {VERSION})",
                                 hint="upgrade cllm")
        hlen, hsha, end = TRAILER.unpack_from(d, n - TRAILER.size)
        if end != END:
            raise ContainerError("end marker missing", offset=n - 8, hint="the file is truncated or was not fully written")
        hstart = n - TRAILER.size - hlen
        if hlen <= 0 or hstart < PREFIX.size:
            raise ContainerError(f"header length {hlen} is impossible", offset=n - TRAILER.size)
        raw = bytes(d[hstart:hstart + hlen])
        if hashlib.sha256(raw).digest() != hsha:
            raise ContainerError("header checksum mismatch", offset=hstart, hint="the file is damaged; recompile it")
        try:
            header = json.loads(raw)
        except ValueError as e:
            raise ContainerError(f"header is not JSON: {e}", offset=hstart) from e
        if header.get("payload_len") != hstart - PREFIX.size:
            raise ContainerError("payload length disagrees with the header", offset=hstart)
        self.payload_start = PREFIX.size
        return header

    def buffers(self, rec: dict[str, Any], verify: bool = True) -> dict[str, bytes]:
        out = {}
        limit = self.header["payload_len"]
        for b in rec["buffers"]:
            off, ln = int(b["offset"]), int(b["length"])
            if off < 0 or ln < 0 or off + ln > limit:
                raise ContainerError(f"buffer '{b['name']}' lies outside the payload", tensor=rec["name"],
                                     offset=self.payload_start + off)
            out[b["name"]] = bytes(self.data[self.payload_start + off:self.payload_start + off + ln])
        if verify and record_hash(rec, out.values()) != rec["sha256"]:
            first = rec["buffers"][0]["offset"] if rec["buffers"] else 0
            raise ContainerError("sha256 mismatch: payload bytes are damaged", tensor=rec["name"],
                                 offset=self.payload_start + first, hint="the artifact is corrupt; recompile it")
        return out

    def verify(self) -> list[str]:
        """Check every tensor's hash; return the names checked (raises on the first bad one)."""
        for rec in self.header["tensors"]:
            self.buffers(rec, verify=True)
        self.tokenizer()
        return [r["name"] for r in self.header["tensors"]]

    def tokenizer(self) -> TokenizerSpec | None:
        t = self.header.get("tokenizer")
        if not t:
            return None
        import zstandard
        blob = bytes(self.data[self.payload_start + t["offset"]:self.payload_start + t["offset"] + t["length"]])
        if hashlib.sha256(blob).hexdigest() != t["sha256"]:
            raise ContainerError("tokenizer checksum mismatch", tensor="<tokenizer>",
                                 offset=self.payload_start + t["offset"], hint="the artifact is corrupt")
        text = zstandard.ZstdDecompressor().decompress(blob, max_output_size=int(t["raw_len"])).decode()
        return TokenizerSpec(text, add_bos=bool(t["add_bos"]), chat_template=t.get("chat_template"))

    def rep(self, rec: dict[str, Any], verify: bool = True) -> Representation:
        return rep_from_record(rec["kind"], rec["meta"], self.buffers(rec, verify), tuple(rec["shape"]), rec["name"])


def read_container(path: Path, verify: bool = True) -> Model:
    cf = ContainerFile(path)
    try:
        config = ModelConfig.from_dict(cf.header["config"])
    except TypeError as e:
        raise ContainerError(f"config record is malformed: {e}") from e
    model = Model(config, cf.tokenizer(), source=dict(cf.header.get("source", {}), artifact=str(path)))
    for rec in cf.header["tensors"]:
        model.add(TensorNode(rec["name"], tuple(rec["shape"]), cf.rep(rec, verify), role=rec.get("role", "")))
    return model
