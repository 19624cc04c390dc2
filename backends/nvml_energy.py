"""Energy of a block of GPU work from NVML's total-energy counter (cllm_compiler.energy.nvml).

`EnergyMeter` reads the counter before and after, so J/token is measured, not estimated, and the
raw counter values travel with it. Where NVML or the counter is missing (no GPU, an old GPU, no
nvidia-ml-py) it says so in `source` and gives no number: a figure without a meter is a guess.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..energy.nvml import NvmlReader


@dataclass
class Energy:
    joules: float | None
    seconds: float
    source: str  # "nvml total-energy counter (GPU i)" or why there is no number
    raw: dict[str, Any] = field(default_factory=dict)

    def per(self, count: int) -> float | None:
        return None if self.joules is None or count <= 0 else self.joules / count


class EnergyMeter:
    """with EnergyMeter(index) as e: ...; then e.result (an Energy)."""

    def __init__(self, index: int = 0, reader: NvmlReader | None = None) -> None:
        self.reader = reader or NvmlReader(index)
        why = self.reader.probe()
        self.reason = f"no energy reading: {why}" if why else ""
        self.result = Energy(None, 0.0, self.reason)

    @property
    def available(self) -> bool:
        return not self.reason

    def __enter__(self) -> "EnergyMeter":
        self._t0 = time.perf_counter()
        if self.available:
            self.reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.available:
            r = self.reader.stop()
            self.result = Energy(r.joules, r.seconds, r.meter, r.raw)
        else:
            self.result = Energy(None, time.perf_counter() - self._t0, self.reason)
