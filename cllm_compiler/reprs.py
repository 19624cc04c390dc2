"""Tensor representations: how a weight is stored, how it decodes, what it costs.

A representation never keeps a dense copy of a compressed tensor: `Quantized` holds codes
and scales only, `Encoded` holds entropy-coded bytes only. `decode()` rebuilds a dense
float32 tensor on demand, and `to_record()` gives the exact bytes that go on disk, so
`storage_bits()` is what the container will hold for the tensor's payload.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np
import torch

from . import packing
from .errors import ContainerError

Buffers = dict[str, bytes]
REPRESENTATIONS: dict[str, type["Representation"]] = {}

DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "f32": (torch.float32, 32), "f16": (torch.float16, 16), "bf16": (torch.bfloat16, 16)}


def register_rep(cls: type["Representation"]) -> type["Representation"]:
    if cls.kind in REPRESENTATIONS:
        raise ValueError(f"representation '{cls.kind}' registered twice")
    REPRESENTATIONS[cls.kind] = cls
    return cls


class Representation:
    kind: ClassVar[str] = ""

    def decode(self) -> torch.Tensor:
        raise NotImplementedError

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        raise NotImplementedError

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "Representation":
        raise NotImplementedError

    def storage_bits(self) -> int:
        return 8 * sum(len(b) for b in self.to_record()[1].values())

    def describe(self) -> str:
        return self.kind


def rep_from_record(kind: str, meta: dict[str, Any], buffers: Buffers,
                    shape: tuple[int, ...], tensor: str = "?") -> Representation:
    cls = REPRESENTATIONS.get(kind)
    if cls is None:
        raise ContainerError(f"unknown representation '{kind}'", tensor=tensor,
                             hint=f"known: {', '.join(sorted(REPRESENTATIONS))}; a newer cllm may have written it")
    try:
        return cls.from_record(meta, buffers, shape)
    except (KeyError, ValueError, TypeError, ZeroDivisionError, OverflowError) as e:
        raise ContainerError(f"malformed '{kind}' record: {e}", tensor=tensor,
                             hint="the artifact is damaged; recompile it") from e


@register_rep
class Dense(Representation):
    """A plain tensor. With `loader` it is lazy: read from the source file on each decode."""

    kind = "dense"

    def __init__(self, shape: tuple[int, ...], dtype: str = "f32",
                 data: torch.Tensor | None = None,
                 loader: Callable[[], torch.Tensor] | None = None,
                 row_loader: Callable[[int, int], torch.Tensor] | None = None) -> None:
        if (data is None) == (loader is None):
            raise ValueError("Dense needs exactly one of data or loader")
        self.shape, self.dtype, self._data, self._loader = tuple(shape), dtype, data, loader
        self._row_loader = row_loader

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as float32, read from the source alone when it allows that,
        so a pass can walk a tensor larger than memory."""
        if self._row_loader is not None and self._data is None:
            return self._row_loader(start, stop).to(DTYPES[self.dtype][0]).to(torch.float32)
        return self.tensor()[start:stop].to(torch.float32)

    def tensor(self) -> torch.Tensor:
        t = self._data if self._data is not None else self._loader()  # type: ignore[misc]
        return t.to(DTYPES[self.dtype][0]).reshape(self.shape)

    def decode(self) -> torch.Tensor:
        return self.tensor().to(torch.float32)

    def storage_bits(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        t = self.tensor().contiguous()
        raw = t.view(torch.uint8) if t.dtype != torch.uint8 else t
        return {"dtype": self.dtype}, {"data": raw.numpy().tobytes()}

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "Dense":
        dt = DTYPES[meta["dtype"]][0]
        raw = torch.frombuffer(bytearray(buffers["data"]), dtype=torch.uint8)
        data = raw.view(dt).reshape(shape)
        return cls(shape, meta["dtype"], data=data)

    @classmethod
    def specs_for(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        from .codecs import BufferSpec
        return {"data": BufferSpec("float", DTYPES[meta["dtype"]][1], math.prod(shape), meta["dtype"])}

    def describe(self) -> str:
        return self.dtype


def _decode_groups(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                   bits: int, group: int, mins: np.ndarray | None = None) -> torch.Tensor:
    rows, cols = codes.shape
    ngroups = scales.shape[1]
    q = torch.from_numpy(codes).to(torch.float32)
    if ngroups * group != cols:  # ragged last group: pad, decode, crop
        q = torch.nn.functional.pad(q, (0, ngroups * group - cols))
    q = q.view(rows, ngroups, group)
    scale = torch.from_numpy(scales.astype(np.float32))[..., None]
    if mins is not None:  # llama.cpp Q4_1-style: w = code * scale + min
        low = torch.from_numpy(mins.astype(np.float32))[..., None]
        return (q * scale + low).view(rows, ngroups * group)[:, :cols].contiguous()
    zero = (torch.from_numpy(zeros).to(torch.float32)[..., None] if zeros is not None
            else torch.tensor(float(1 << (bits - 1))))
    return ((q - zero) * scale).view(rows, ngroups * group)[:, :cols].contiguous()


@register_rep
class Quantized(Representation):
    """Uniform integer codes per group along the input dimension (rows = outputs).

    w = (code - zero) * scale, with zero = 2^(bits-1) when symmetric; or, with `mins`
    (llama.cpp Q4_1/Q5_1 style), w = code * scale + min. Scales and mins are fp16, zeros
    are `bits`-wide integers; codes are bit-packed on disk.
    """

    kind = "quant"

    def __init__(self, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                 bits: int, group: int, mins: np.ndarray | None = None) -> None:
        if codes.ndim != 2:
            raise ValueError("quantized tensors are 2-D")
        self.codes, self.scales, self.zeros = codes, scales.astype(np.float16), zeros
        self.mins = None if mins is None else mins.astype(np.float16)
        # A group wider than the tensor is one group of all its columns: recorded as such, so the
        # reader (which refuses group > columns) reads back what the writer wrote.
        self.bits, self.group = bits, min(group, max(codes.shape[1], 1))

    @property
    def symmetric(self) -> bool:
        return self.zeros is None and self.mins is None

    def decode(self) -> torch.Tensor:
        return _decode_groups(self.codes, self.scales, self.zeros, self.bits, self.group, self.mins)

    def decode_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) only: lets callers walk a large tensor in bounded memory."""
        sl = slice(start, stop)
        return _decode_groups(self.codes[sl], self.scales[sl], None if self.zeros is None else self.zeros[sl],
                              self.bits, self.group, None if self.mins is None else self.mins[sl])

    def storage_bits(self) -> int:
        n = self.codes.size
        bits = 8 * packing.packed_nbytes(n, self.bits) + 16 * self.scales.size
        if self.zeros is not None:
            bits += 8 * packing.packed_nbytes(self.zeros.size, self.bits)
        if self.mins is not None:
            bits += 16 * self.mins.size
        return bits

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        meta = {"bits": self.bits, "group": self.group, "sym": self.symmetric,
                "zero": "float" if self.mins is not None else "int", "ngroups": int(self.scales.shape[1])}
        bufs = {"codes": packing.pack(self.codes, self.bits),
                "scales": np.ascontiguousarray(self.scales, dtype="<f2").tobytes()}
        if self.zeros is not None:
            bufs["zeros"] = packing.pack(self.zeros, self.bits)
        if self.mins is not None:
            bufs["mins"] = np.ascontiguousarray(self.mins, dtype="<f2").tobytes()
        return meta, bufs

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "Quantized":
        rows, cols = shape
        bits, group, ng = int(meta["bits"]), int(meta["group"]), int(meta["ngroups"])
        if not (1 <= bits <= 8 and 1 <= group <= max(cols, 1)):
            raise ValueError(f"bits {bits} / group {group} out of range")
        if ng != -(-cols // group):
            raise ValueError(f"ngroups {ng} does not match {cols} columns / group {group}")
        codes = packing.unpack(buffers["codes"], bits, rows * cols).reshape(rows, cols)
        scales = np.frombuffer(buffers["scales"], dtype="<f2").reshape(rows, ng).copy()
        zeros = mins = None
        if meta.get("zero") == "float":
            mins = np.frombuffer(buffers["mins"], dtype="<f2").reshape(rows, ng).copy()
        elif not meta["sym"]:
            zeros = packing.unpack(buffers["zeros"], bits, rows * ng).reshape(rows, ng)
        return cls(codes, scales, zeros, bits, group, mins)

    @classmethod
    def specs_for(cls, meta: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        from .codecs import BufferSpec
        bits, ng = int(meta["bits"]), int(meta["ngroups"])
        rows, cols = shape
        specs = {"codes": BufferSpec("codes", bits, rows * cols), "scales": BufferSpec("float", 16, rows * ng, "f16")}
        if meta.get("zero") == "float":
            specs["mins"] = BufferSpec("float", 16, rows * ng, "f16")
        elif not meta["sym"]:
            specs["zeros"] = BufferSpec("codes", bits, rows * ng)
        return specs

    def describe(self) -> str:
        kind = " sym" if self.symmetric else (" fmin" if self.mins is not None else "")
        return f"int{self.bits} g{self.group}{kind}"


@register_rep
class Encoded(Representation):
    """Another representation's buffers, each passed through a named codec."""

    kind = "encoded"

    def __init__(self, inner_kind: str, inner_meta: dict[str, Any], payload: dict[str, "Coded"],
                 shape: tuple[int, ...]) -> None:
        self.inner_kind, self.inner_meta, self.payload, self.shape = inner_kind, inner_meta, payload, shape

    @classmethod
    def wrap(cls, inner: Representation, shape: tuple[int, ...],
             choose: Callable[[str, bytes, Any], "Coded"]) -> "Encoded":
        meta, bufs = inner.to_record()
        return cls.from_buffers(inner.kind, meta, bufs, shape, choose)

    @classmethod
    def from_buffers(cls, kind: str, meta: dict[str, Any], bufs: Buffers, shape: tuple[int, ...],
                     choose: Callable[[str, bytes, Any], "Coded"]) -> "Encoded":
        specs = specs_of(kind, meta, shape)
        payload = {}
        for name in list(bufs):
            payload[name] = choose(name, bufs.pop(name), specs.get(name))  # free each raw buffer once coded
        return cls(kind, meta, payload, shape)

    def inner(self) -> Representation:
        from .codecs import BufferSpec, get_codec
        specs = specs_of(self.inner_kind, self.inner_meta, self.shape)
        from .errors import CodecError
        raw = {}
        for name, c in self.payload.items():
            raw[name] = get_codec(c.codec).decode(c.data, c.raw_len, specs.get(name, BufferSpec()), c.params)
            if c.raw_sha256 and hashlib.sha256(raw[name]).hexdigest() != c.raw_sha256:
                raise CodecError(f"buffer '{name}' decodes to bytes that fail their sha256",
                                 hint="the artifact is corrupt; recompile it")
        return rep_from_record(self.inner_kind, self.inner_meta, raw, self.shape)

    def decode(self) -> torch.Tensor:
        return self.inner().decode()

    def storage_bits(self) -> int:
        return 8 * sum(len(c.data) for c in self.payload.values())

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        meta = {"inner": self.inner_kind, "inner_meta": self.inner_meta,
                "codecs": {n: {"codec": c.codec, "raw_len": c.raw_len, "params": c.params}
                           for n, c in self.payload.items()}}
        return meta, {n: c.data for n, c in self.payload.items()}

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "Encoded":
        payload = {n: Coded(c["codec"], int(c["raw_len"]), buffers[n], dict(c.get("params", {})))
                   for n, c in meta["codecs"].items()}
        if meta["inner"] == cls.kind:
            raise ValueError("an encoded tensor cannot wrap another encoded tensor")
        return cls(meta["inner"], meta["inner_meta"], payload, shape)

    def nominal_bits(self) -> int:
        """Bits of the representation before entropy coding (packed codes, scales, LUTs...)."""
        return 8 * sum(c.raw_len for c in self.payload.values())

    def ideal_bits(self) -> float:
        """Order-0 entropy of every modelled buffer (freq table x symbols) plus the others' stored
        bits: the size an ideal coder with the same model would reach."""
        from .codecs.rans import FrequencyTable
        total = 0.0
        for c in self.payload.values():
            freq = c.params.get("freq")
            if freq:
                t = FrequencyTable(tuple(freq))
                total += t.entropy_bits() * t.total
            else:
                total += 8 * len(c.data)
        return total

    def entropy_bits(self) -> float | None:
        """Order-0 entropy of the codes (bits/index) when a frequency table is stored."""
        from .codecs.rans import FrequencyTable
        c = self.payload.get("codes")
        if c is None or "freq" not in c.params:
            return None
        return FrequencyTable(tuple(c.params["freq"])).entropy_bits()

    def describe(self) -> str:
        codecs = sorted({c.codec for c in self.payload.values()})
        return f"{describe_record(self.inner_kind, self.inner_meta)} + {'/'.join(codecs)}"


class Coded(NamedTuple):
    codec: str
    raw_len: int
    data: bytes
    params: dict[str, Any]
    raw_sha256: str = ""  # of the decoded bytes; checked after the codec runs


def describe_record(kind: str, meta: dict[str, Any]) -> str:
    """Short description of a stored representation from its record alone (no decoding)."""
    cls = REPRESENTATIONS.get(kind)
    if cls is Quantized:
        return f"int{meta['bits']} g{meta['group']}"
    if hasattr(cls, "describe_meta"):
        return cls.describe_meta(meta)  # type: ignore[union-attr]
    return meta.get("dtype", kind)


def specs_of(kind: str, meta: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    cls = REPRESENTATIONS.get(kind)
    fn = getattr(cls, "specs_for", None)
    return fn(meta, shape) if fn else {}


def coded_buffers(rep: Representation) -> tuple[str, dict[str, Any], dict[str, Coded]]:
    """A representation as (kind, meta, coded buffers): what the container stores per tensor."""
    if isinstance(rep, Encoded):
        return rep.inner_kind, rep.inner_meta, dict(rep.payload)
    meta, bufs = rep.to_record()
    return rep.kind, meta, {n: Coded("raw", len(b), b, {}, hashlib.sha256(b).hexdigest()) for n, b in bufs.items()}


def rep_from_coded(kind: str, meta: dict[str, Any], coded: dict[str, Coded], shape: tuple[int, ...],
                   tensor: str = "?") -> Representation:
    """Inverse of `coded_buffers`; raw-only tensors come back as their plain representation."""
    if kind == Encoded.kind or kind not in REPRESENTATIONS:
        raise ContainerError(f"unknown representation '{kind}'", tensor=tensor,
                             hint=f"known: {', '.join(sorted(set(REPRESENTATIONS) - {Encoded.kind}))}")
    if all(c.codec == "raw" for c in coded.values()):
        return rep_from_record(kind, meta, {n: c.data for n, c in coded.items()}, shape, tensor)
    return Encoded(kind, meta, coded, shape)


from . import reprs_codebook, reprs_ggml, reprs_lowrank, reprs_sparse  # noqa: E402,F401  (register composite representations)
