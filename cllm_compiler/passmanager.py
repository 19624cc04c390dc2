"""Runs passes in order, checks requires/provides, and calls instruments around each pass.

Instruments (timing, memory, IR dumps, progress) hook the manager, never the passes.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import psutil

from .errors import PassError
from .ir import Model
from .passes_base import Pass, PassStats


class Instrument:
    def before_pass(self, p: Pass, model: Model) -> None: ...

    def after_pass(self, p: Pass, model: Model, stats: PassStats) -> None: ...


class TimingInstrument(Instrument):
    """Wall time, current RSS after the pass and peak RSS so far, per pass."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._t0 = 0.0

    def before_pass(self, p: Pass, model: Model) -> None:
        self._t0 = time.perf_counter()

    def after_pass(self, p: Pass, model: Model, stats: PassStats) -> None:
        self.records.append({
            "pass": p.spec(), "seconds": round(time.perf_counter() - self._t0, 3),
            "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


class IRDumpInstrument(Instrument):
    """Writes a JSON summary of the IR (per tensor: shape, representation, bits) after each pass."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = 0

    def after_pass(self, p: Pass, model: Model, stats: PassStats) -> None:
        self.index += 1
        dump = {"pass": p.spec(), "tensors": [
            {"name": t.name, "shape": list(t.shape), "role": t.role, "rep": t.rep.describe(),
             "bits": t.rep.storage_bits()} for t in model]}
        (self.folder / f"{self.index:02d}-{p.name}.json").write_text(json.dumps(dump, indent=1))


class PassManager:
    def __init__(self, passes: list[Pass], instruments: list[Instrument] | None = None) -> None:
        self.passes = passes
        self.instruments = list(instruments or [])
        self.check()

    def check(self) -> None:
        have: set[str] = set()
        for p in self.passes:
            missing = p.requires - have
            if missing:
                raise PassError(f"pass '{p.name}' requires {', '.join(sorted(missing))}, which no earlier pass provides",
                                hint="reorder the pipeline or add the providing pass before it")
            have |= p.provides

    def run(self, model: Model) -> list[PassStats]:
        results = []
        for p in self.passes:
            for ins in self.instruments:
                ins.before_pass(p, model)
            stats = p.run(model)
            for ins in self.instruments:
                ins.after_pass(p, model, stats)
            results.append(stats)
        return results
