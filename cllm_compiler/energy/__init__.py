"""Energy readers behind one interface, and the labelled estimate used where none exists.

Counters (NVML total energy, RAPL energy_uj) are read before and after the work; power sensors
(Jetson INA3221 hwmon rails, tegrastats) are sampled on a thread and integrated. A reader that
is absent or fails yields a `not_measured` record with its reason; `estimate()` then gives
J/token from the target table (power of the mode x time to stream the weights once), tagged
`estimated` with that model, never passed off as a measurement.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..measure import estimated, measured, not_measured


@dataclass
class Reading:
    joules: float
    seconds: float
    meter: str
    raw: dict[str, Any] = field(default_factory=dict)


class EnergyReader(ABC):
    name = "reader"

    @abstractmethod
    def probe(self) -> str | None:
        """None when this reader works here, else why not (one line)."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> Reading: ...


class CounterReader(EnergyReader):
    """Cumulative counters that wrap at a known range (RAPL) or never (NVML's 64-bit mJ)."""
    unit_j = 1e-6

    @abstractmethod
    def counters(self) -> dict[str, tuple[int, int | None]]:
        """zone -> (counter value, wrap range or None)."""

    def start(self) -> None:
        self._t0, self._c0 = time.perf_counter(), self.counters()

    def stop(self) -> Reading:
        c1, dt = self.counters(), time.perf_counter() - self._t0
        deltas, wraps = {}, {}
        for zone, (v1, rng) in c1.items():
            v0 = self._c0[zone][0]
            wraps[zone] = v1 < v0
            deltas[zone] = v1 - v0 + (rng or 0) if v1 < v0 else v1 - v0
        return Reading(sum(deltas.values()) * self.unit_j, dt, self.name,
                       {"counter_deltas": deltas, "wrapped": wraps, "start": {z: v[0] for z, v in self._c0.items()},
                        "end": {z: v[0] for z, v in c1.items()}, "unit_j": self.unit_j})


class SamplingReader(EnergyReader):
    """Instantaneous power (W) polled every `interval` s on a thread; energy = trapezoid integral."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []

    @abstractmethod
    def power_w(self) -> tuple[float, dict[str, float]]:
        """(total power counted, per-rail power) now."""

    def start(self) -> None:
        self.samples, self._stop = [], threading.Event()
        self._rails: dict[str, list[float]] = {}
        self._poll()
        self._th = threading.Thread(target=self._loop, daemon=True)
        self._th.start()

    def _poll(self) -> None:
        total, rails = self.power_w()
        self.samples.append((time.perf_counter(), total))
        for k, v in rails.items():
            self._rails.setdefault(k, []).append(v)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def stop(self) -> Reading:
        self._stop.set()
        self._th.join()
        self._poll()
        return integrate(self.samples, self.name, self._rails)


def integrate(samples: list[tuple[float, float]], meter: str, rails: dict[str, list[float]] | None = None) -> Reading:
    """Trapezoid rule over (time s, power W) samples."""
    j = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))
    dt = samples[-1][0] - samples[0][0] if samples else 0.0
    return Reading(j, dt, meter, {"samples": len(samples), "mean_w": j / dt if dt else None,
                                  "rail_mean_w": {k: sum(v) / len(v) for k, v in (rails or {}).items()}})


def default_readers(kind: str) -> list[EnergyReader]:
    """Readers to try, best first, for work on 'gpu', 'jetson' or 'cpu'."""
    from .jetson import HwmonReader, TegrastatsReader
    from .nvml import NvmlReader
    from .rapl import RaplReader
    return {"gpu": [NvmlReader()], "jetson": [HwmonReader(), TegrastatsReader()],
            "cpu": [RaplReader()]}.get(kind, [NvmlReader(), HwmonReader(), TegrastatsReader(), RaplReader()])


def measure(fn: Callable[[], int], readers: list[EnergyReader]) -> tuple[dict[str, Any], int]:
    """Run fn (returns the tokens it produced) under the first working reader:
    (J/token record, tokens). Every reader that could not be used is named in the record."""
    why = []
    for r in readers:
        reason = r.probe()
        if reason:
            why.append(f"{r.name}: {reason}")
            continue
        try:
            r.start()
            tokens = fn()
            reading = r.stop()
        except OSError as e:  # a sensor that vanished mid-run: say so, keep the run's other results
            why.append(f"{r.name}: failed while reading ({e})")
            return not_measured("J/token", "; ".join(why)), 0
        return measured(reading.joules / max(tokens, 1), "J/token", reading.meter, joules=reading.joules,
                        seconds=reading.seconds, tokens=tokens, raw=reading.raw), tokens
    return not_measured("J/token", "; ".join(why) or "no energy reader for this device"), fn()


def estimate(target: Any, bytes_per_token: int, mode: str | None = None) -> dict[str, Any]:
    """J/token = P(mode) x bytes_per_token / bandwidth: the decode roofline at the mode's power."""
    powers: dict[str, float] = target.extra.get("power_w", {})
    if not powers:
        return not_measured("J/token", f"target {target.name} has no power_w table to estimate from")
    mode = mode if mode in powers else max(powers, key=lambda m: powers[m])
    seconds = bytes_per_token / (target.bandwidth_gbs * 1e9)
    return estimated(powers[mode] * seconds, "J/token",
                     f"{powers[mode]:g} W ({target.name} power mode {mode}) x {bytes_per_token:,} weight bytes "
                     f"per token / {target.bandwidth_gbs:g} GB/s peak bandwidth (roofline; a lower bound on time, "
                     "so J/token is optimistic)", power_mode=mode)
