"""Tensor representations: how a weight is stored, how it decodes, what it costs.

A representation never keeps a dense copy of a compressed tensor: `Quantized` holds codes
and scales only, `Encoded` holds entropy-coded bytes only. `decode()` rebuilds a dense
float32 tensor on demand, and `to_record()` gives the exact bytes that go on disk, so
`storage_bits()` is what the container will hold for the tensor's payload.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

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
    except (KeyError, ValueError, TypeError) as e:
        raise ContainerError(f"malformed '{kind}' record: {e}", tensor=tensor,
                             hint="the artifact is damaged; recompile it") from e


@register_rep
class Dense(Representation):
    """A plain tensor. With `loader` it is lazy: read from the source file on each decode."""

    kind = "dense"

    def __init__(self, shape: tuple[int, ...], dtype: str = "f32",
                 data: torch.Tensor | None = None,
                 loader: Callable[[], torch.Tensor] | None = None) -> None:
        if (data is None) == (loader is None):
            raise ValueError("Dense needs exactly one of data or loader")
        self.shape, self.dtype, self._data, self._loader = tuple(shape), dtype, data, loader

    def tensor(self) -> torch.Tensor:
        t = self._data if self._data is not None else self._loader()  # type: ignore[misc]
        return t.to(DTYPES[self.dtype][0]).reshape(self.shape)

    def decode(self) -> torch.Tensor:
        return self.tensor().to(torch.float32)

    def storage_bits(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * DTYPES[self.dtype][1]

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
        self.bits, self.group = bits, group

    @property
    def symmetric(self) -> bool:
        return self.zeros is None and self.mins is None

    def decode(self) -> torch.Tensor:
        return _decode_groups(self.codes, self.scales, self.zeros, self.bits, self.group, self.mins)

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

    def describe(self) -> str:
        kind = " sym" if self.symmetric else (" fmin" if self.mins is not None else "")
        return f"int{self.bits} g{self.group}{kind}"


@register_rep
class Encoded(Representation):
    """Another representation's buffers, each passed through a named codec."""

    kind = "encoded"

    def __init__(self, inner_kind: str, inner_meta: dict[str, Any],
                 payload: dict[str, tuple[str, int, bytes]], shape: tuple[int, ...]) -> None:
        # payload: buffer name -> (codec name, decoded length, encoded bytes)
        self.inner_kind, self.inner_meta, self.payload, self.shape = inner_kind, inner_meta, payload, shape

    @classmethod
    def wrap(cls, inner: Representation, shape: tuple[int, ...],
             choose: Callable[[str, bytes], tuple[str, bytes]]) -> "Encoded":
        meta, bufs = inner.to_record()
        payload = {}
        for name, raw in bufs.items():
            codec, data = choose(name, raw)
            payload[name] = (codec, len(raw), data)
        return cls(inner.kind, meta, payload, shape)

    def inner(self) -> Representation:
        from .codecs import get_codec  # deferred: keeps import order simple
        raw = {}
        for name, (codec, length, data) in self.payload.items():
            raw[name] = get_codec(codec).decode(data, length)
        return rep_from_record(self.inner_kind, self.inner_meta, raw, self.shape)

    def decode(self) -> torch.Tensor:
        return self.inner().decode()

    def storage_bits(self) -> int:
        return 8 * sum(len(d) for _, _, d in self.payload.values())

    def to_record(self) -> tuple[dict[str, Any], Buffers]:
        meta = {"inner": self.inner_kind, "inner_meta": self.inner_meta,
                "codecs": {n: {"codec": c, "raw_len": ln} for n, (c, ln, _) in self.payload.items()}}
        return meta, {n: d for n, (_, _, d) in self.payload.items()}

    @classmethod
    def from_record(cls, meta: dict[str, Any], buffers: Buffers, shape: tuple[int, ...]) -> "Encoded":
        payload = {n: (c["codec"], int(c["raw_len"]), buffers[n]) for n, c in meta["codecs"].items()}
        return cls(meta["inner"], meta["inner_meta"], payload, shape)

    def describe(self) -> str:
        inner = REPRESENTATIONS[self.inner_kind]
        codecs = sorted({c for c, _, _ in self.payload.values()})
        base = (f"int{self.inner_meta['bits']} g{self.inner_meta['group']}" if inner is Quantized
                else self.inner_meta.get("dtype", self.inner_kind))
        return f"{base} + {'/'.join(codecs)}"
