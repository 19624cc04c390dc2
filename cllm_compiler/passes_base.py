"""Passes as small declared objects, registered once by name.

A pass declares typed parameters, the IR properties it requires and provides, and which
tensors it matches (by role or name regex). The pass manager checks the declarations;
passes only transform tensors and return statistics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch

from .errors import PassError
from .ir import ALL_ROLES, ROLE_GROUPS, Model, TensorNode
from .safeio import compile_regex, regex_search, short

if TYPE_CHECKING:
    from .calibration import Calibration
    from .reprs import Representation

PASSES: dict[str, type["Pass"]] = {}


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None


@dataclass
class TensorStats:
    name: str
    numel: int
    bits: int
    rep: str
    mse: float | None = None
    sqnr_db: float | None = None
    out_mse: float | None = None  # output error per element on the calibration tokens

    @property
    def bpw(self) -> float:
        return self.bits / max(self.numel, 1)


@dataclass
class PassStats:
    name: str
    seconds: float = 0.0
    tensors: list[TensorStats] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PassContext:
    """What passes share besides the IR (as TVM's PassContext): the artifact folder being written,
    calibration statistics, the untouched source weights and per-tensor decisions (the allocator's)."""

    workdir: Path | None = None
    reuse: tuple[Path, ...] = ()  # folders where an earlier calibration may be cached
    model_sha256: str = ""
    calib: "Calibration | None" = None
    source: dict[str, "Representation"] = field(default_factory=dict)
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipeline: list["Pass"] = field(default_factory=list)  # set by the pass manager
    simulating: bool = False  # the allocator is trying a candidate: skip quality statistics
    rate_only: bool = False  # only the candidate's bytes matter (no calibration yet): see GPTQPass.apply
    texts: dict[tuple, Any] = field(default_factory=dict)  # tokenized training/calibration text, by spec

    _last: tuple[str, torch.Tensor] | None = None

    def original(self, node: TensorNode) -> torch.Tensor:
        """The tensor's weights as loaded (float32), whatever earlier passes turned it into.
        The last one is kept: several passes (and the allocator's candidates) ask in a row."""
        if node.name not in self.source:
            return node.rep.decode()
        if self._last is None or self._last[0] != node.name:
            self._last = (node.name, self.source[node.name].decode())
        return self._last[1]

    def capture(self, model: Model) -> None:
        for node in model:
            self.source.setdefault(node.name, node.rep)


def register_pass(cls: type["Pass"]) -> type["Pass"]:
    if not cls.name:
        raise PassError(f"{cls.__name__} declares no name")
    if cls.name in PASSES:
        raise PassError(f"pass '{cls.name}' is registered twice", hint="pass names must be unique")
    PASSES[cls.name] = cls
    return cls


def parse_roles(spec: str) -> frozenset[str]:
    roles: set[str] = set()
    for item in filter(None, spec.split("|")):
        if item in ROLE_GROUPS:
            roles |= ROLE_GROUPS[item]
        elif item in ALL_ROLES:
            roles.add(item)
        else:
            raise PassError(f"unknown tensor role '{item}'",
                            hint=f"roles: {', '.join(sorted(ALL_ROLES | set(ROLE_GROUPS)))}")
    return frozenset(roles)


class Pass:
    """Base class. Subclasses set name/params/requires/provides and implement `run`."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    default_match: ClassVar[str] = "linear"
    # Analysis passes read the model and fill the context (calibrate, allocate); they run over the
    # whole model before the transforms, which may then stream tensor by tensor.
    analysis: ClassVar[bool] = False
    lossless: ClassVar[bool] = False  # changes how a tensor is stored, never what it decodes to
    yields: ClassVar[str | None] = None  # storage format it leaves tensors in (targets list what they run)

    def __init__(self, **kwargs: Any) -> None:
        declared = {p.name: p for p in self.all_params()}
        unknown = sorted(set(kwargs) - set(declared))
        if unknown:
            raise PassError(f"pass '{self.name}' has no parameter '{unknown[0]}'",
                            hint=f"parameters of {self.name}: {', '.join(declared)}")
        self.on_tensor: Callable[[str], None] | None = None  # set by a progress instrument
        self.ctx = PassContext()  # replaced by the pass manager's
        self.args: dict[str, Any] = {}
        for p in declared.values():
            self.args[p.name] = self._coerce(p, kwargs.get(p.name, p.default))
        self.roles = parse_roles(self.args["match"])
        # The `regex` engine, so that a user's pattern is matched under a time limit (ReDoS).
        self.name_re = compile_regex(self.args["names"], f"{self.name}: names=", PassError) if self.args["names"] else None
        self.skip_re = compile_regex(self.args["skip"], f"{self.name}: skip=", PassError) if self.args["skip"] else None

    @classmethod
    def all_params(cls) -> tuple[Param, ...]:
        return cls.params + (
            Param("match", str, cls.default_match, "tensor roles to act on, '|'-separated (linear, attn, mlp, embed, lm_head, ...)"),
            Param("names", str, "", "optional regex a tensor name must also match"),
            Param("skip", str, "", "regex of tensor names to leave untouched"),
        )

    def _coerce(self, p: Param, value: Any) -> Any:
        raw = value
        try:
            if isinstance(value, (list, dict, tuple, set, bytes)) or value is None:
                raise TypeError(value)  # str([1]) would pass as text; a recipe's list is a mistake
            if p.type is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1", "yes")
            elif p.type is int and isinstance(value, float) and value != int(value):
                raise ValueError(value)  # group=1.5 is not 1
            else:
                value = p.type(value)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(value)
        except (TypeError, ValueError, OverflowError):
            kind = {int: "whole number", float: "finite number", bool: "true/false"}.get(p.type, p.type.__name__)
            raise PassError(f"{self.name}: {p.name}={short(raw)} is not a {kind}", hint=p.help) from None
        if p.choices is not None and value not in p.choices:
            raise PassError(f"{self.name}: {p.name}={short(value)} is not allowed",
                            hint=f"choose one of {', '.join(map(str, p.choices))}")
        if p.check is not None and not p.check(value):
            raise PassError(f"{self.name}: {p.name}={short(value)} is out of range", hint=p.help)
        return value

    def storage_format(self) -> str | None:
        """The format this pass leaves tensors in (a target lists the formats its backend runs)."""
        return self.yields

    def args_for(self, node: TensorNode) -> dict[str, Any]:
        """This pass's arguments for `node`, with the allocator's per-tensor choices applied."""
        plan = self.ctx.plan.get(node.name)
        if not plan:
            return self.args
        declared = {p.name: p for p in self.all_params()}
        return {**self.args, **{k: self._coerce(declared[k], v) for k, v in plan.items() if k in declared}}

    def matches(self, node: TensorNode) -> bool:
        if node.role not in self.roles:
            return False
        if self.name_re and not regex_search(self.name_re, node.name, f"{self.name}: names=", PassError):
            return False
        return not (self.skip_re and regex_search(self.skip_re, node.name, f"{self.name}: skip=", PassError))

    def each(self, model: Model) -> Iterator[TensorNode]:
        """The tensors this pass acts on, reporting each to the progress hook."""
        for node in list(model):
            if self.matches(node):
                yield node
                if self.on_tensor is not None:
                    self.on_tensor(node.name)

    def count(self, model: Model) -> int:
        return sum(1 for n in model if self.matches(n))

    def apply(self, node: TensorNode, stats: PassStats) -> None:
        """Transform one matched tensor. Passes that need the whole model override `run`."""
        raise NotImplementedError

    @property
    def local(self) -> bool:
        """True when the pass works tensor by tensor (so the manager may stream the model)."""
        return type(self).run is Pass.run

    def prepare(self, model: Model) -> None:
        """Check what this pass will read (its text, its resume folder) once the model is loaded
        and before any pass works, so that bad input is refused before hours of compute."""

    def run(self, model: Model) -> PassStats:
        stats = PassStats(self.spec())
        for node in self.each(model):
            self.apply(node, stats)
        return stats

    def spec(self) -> str:
        """Canonical pipeline text for this pass (all parameters, for the manifest)."""
        inner = ",".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.name}{{{inner}}}"


def sqnr_stats(node: TensorNode, ref: torch.Tensor, new: torch.Tensor | Callable[[int, int], torch.Tensor],
               rows_per_block: int | None = None) -> TensorStats:
    """Weight MSE and SQNR of `new` against `ref`; `new` may be a row-range decoder so that a
    large tensor is compared block by block without a second full copy."""
    err = sig = 0.0
    step = rows_per_block or ref.shape[0] or 1
    for r in range(0, max(ref.shape[0], 1), step):
        a = ref[r:r + step]
        b = new(r, r + step) if callable(new) else new[r:r + step]
        err += (b - a).pow_(2).sum(dtype=torch.float64).item()
        sig += a.pow(2).sum(dtype=torch.float64).item()
    return stats_from_sums(node, err, sig)


def stats_from_sums(node: TensorNode, err: float, sig: float) -> TensorStats:
    """TensorStats for `node`'s current representation from squared-error and signal sums."""
    sqnr = 10.0 * math.log10(sig / err) if err > 0 and sig > 0 else float("inf")
    return TensorStats(node.name, node.numel, node.rep.storage_bits(), node.rep.describe(),
                       err / max(node.numel, 1), sqnr)


def measure(node: TensorNode, ref: torch.Tensor, ctx: PassContext) -> TensorStats:
    """Weight SQNR and, when calibrated, output MSE of the node's new representation against `ref`."""
    if ctx.simulating:
        return TensorStats(node.name, node.numel, 0, "simulated")
    delta = node.rep.decode() - ref
    st = stats_from_sums(node, float(delta.pow(2).sum(dtype=torch.float64)),
                         float(ref.pow(2).sum(dtype=torch.float64)))
    if ctx.calib is not None and ctx.calib.has(node.name):
        st.out_mse = ctx.calib.output_mse(node.name, delta)
    return st
