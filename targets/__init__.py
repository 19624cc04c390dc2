"""Targets as data (`cllm_compiler.targets`): one table of facts per device in targets.toml."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..errors import TargetError

DEFAULT_TARGET = "host"  # the best x86 target this CPU runs (targets/host.py)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    formats: tuple[str, ...]
    memory_gb: float
    bandwidth_gbs: float
    compute_tflops: float
    power_modes: tuple[str, ...]
    default_pipeline: str
    sources: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def check_formats(self, passes: list[Any]) -> None:
        """TargetError, before any work, when the pipeline leaves weights in a format the target's
        backend cannot run."""
        bad = [(p.name, f) for p in passes if (f := p.storage_format()) and f not in self.formats]
        if bad:
            name, fmt = bad[0]
            raise TargetError(f"pass '{name}' stores weights as '{fmt}', which target '{self.name}' "
                              f"(backend {self.backend}) cannot run",
                              hint=f"{self.name} runs: {', '.join(self.formats)}; choose another pass or target, "
                                   "or add --no-lower to keep only the portable .cllm (validated in PyTorch)")

    def decode_tokens_per_s_estimate(self, weight_bytes: int) -> float:
        """Bandwidth roofline for batch-1 decode: every weight byte read once per token."""
        return self.bandwidth_gbs * 1e9 / max(weight_bytes, 1)


def _load() -> dict[str, Target]:
    text = resources.files(__package__).joinpath("targets.toml").read_text()
    out = {}
    for name, d in tomllib.loads(text).items():
        known = {k: d.pop(k) for k in list(d) if k in Target.__dataclass_fields__}
        for k in ("formats", "power_modes", "sources"):
            known[k] = tuple(known[k])
        out[name] = Target(name=name, extra=d, **known)
    return out


TARGETS: dict[str, Target] = _load()


def get_target(name: str) -> Target:
    """A target by name; 'host' is this CPU's best x86 target (TargetError if it has none)."""
    if name == "host":
        from .host import pick_host_target
        return pick_host_target().target
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target '{name}'",
                          hint=f"known targets: host (this CPU), {', '.join(TARGETS)}; see cllm-compile --list-targets") from None
