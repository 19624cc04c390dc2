"""The host's CPU: its feature flags, and which x86 target runs here (`--target host`).

Flags come from /proc/cpuinfo (the kernel's names: avx2, fma, avx512_vnni, ...). A target's
`isa` list names every flag its code may use; `--target host` picks the highest `host_rank`
target whose flags the host has all of, and a package is only ever run on a host that has its
flags (running it elsewhere would die with SIGILL).

`CLLM_HIDE_CPU_FLAGS` (comma-separated, `*` globs: "avx512*") hides flags from detection, so an
AVX-512 machine can act as the AVX2-only host of a laptop or a cloud VM (the test suite does, to
check the AVX2 path end to end). It can only hide what the CPU has, never add what it lacks.
"""
from __future__ import annotations

import fnmatch
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ..errors import TargetError
from . import TARGETS, Target

CPUINFO = Path("/proc/cpuinfo")
HIDE_ENV = "CLLM_HIDE_CPU_FLAGS"
MAX_CPUINFO = 1 << 22  # 4 MiB: hundreds of cores' worth; a bounded read of a kernel file


def read_flags(path: Path | None = None) -> frozenset[str]:
    """The first `flags` line of a cpuinfo file (default /proc/cpuinfo); TargetError when it cannot be read."""
    path = path or CPUINFO
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CPUINFO).decode("ascii", "replace")
    except OSError as e:
        raise TargetError(f"cannot read the host's CPU features from {path}: {e.strerror or e}",
                          hint="name the target instead of 'host' (see --list-targets), e.g. --target x86-avx2") from None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    raise TargetError(f"{path} lists no CPU flags", hint="name the target instead of 'host', e.g. --target x86-avx2")


def host_flags(path: Path | None = None, hide: str | None = None) -> frozenset[str]:
    """The host's flags, less those hidden by CLLM_HIDE_CPU_FLAGS (or `hide`)."""
    flags = read_flags(path)
    pats = [p.strip() for p in (os.environ.get(HIDE_ENV, "") if hide is None else hide).split(",") if p.strip()]
    return frozenset(f for f in flags if not any(fnmatch.fnmatchcase(f, p) for p in pats))


def host_targets() -> list[Target]:
    """Targets that compile native code for an x86-64 host, best first."""
    native = [t for t in TARGETS.values() if "host_rank" in t.extra and t.extra.get("tvm_target", {}).get("kind") == "llvm"]
    return sorted(native, key=lambda t: -int(t.extra["host_rank"]))


def missing_flags(target: Target | dict, flags: frozenset[str]) -> list[str]:
    """Flags `target` (or a package manifest with an `isa` list) needs that `flags` lacks."""
    isa = target.extra.get("isa", []) if isinstance(target, Target) else target.get("isa", [])
    return [f for f in isa if f not in flags]


def runs_here(target: Target) -> bool:
    """Whether this CPU runs `target`'s native code (False when its flags cannot be read)."""
    try:
        return "host_rank" in target.extra and not missing_flags(target, host_flags())
    except TargetError:
        return False


@dataclass(frozen=True)
class HostChoice:
    target: Target
    reason: str


def pick_host_target(flags: frozenset[str] | None = None, machine: str | None = None) -> HostChoice:
    """The best x86 target this host runs, and why; TargetError when there is none."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        raise TargetError(f"--target host compiles for x86-64 CPUs; this host is {machine}",
                          hint="name a target (--list-targets): gguf-cpu and onnx-cpu run on any CPU")
    flags = host_flags() if flags is None else flags
    passed: list[str] = []
    for t in host_targets():
        lacks = missing_flags(t, flags)
        if not lacks:
            why = f"this CPU has {', '.join(t.extra['isa'])}"
            if passed:
                why += f" ({'; '.join(passed)})"
            return HostChoice(t, why)
        passed.append(f"not {t.name}: no {', '.join(lacks)}")
    raise TargetError(f"this CPU runs none of cllm's native x86 targets ({'; '.join(passed)})",
                      hint="compile for gguf-cpu or onnx-cpu (their runtimes pick kernels for any x86-64 CPU)")


def resolve_target(name: str) -> tuple[Target, str]:
    """A target by name, with 'host' resolved to this CPU's best x86 target: (target, why or '')."""
    from . import get_target
    if name == "host":
        choice = pick_host_target()
        return choice.target, f"--target host: {choice.target.name}, {choice.reason}"
    return get_target(name), ""
