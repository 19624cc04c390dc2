"""Runs passes in order, checks requires/provides, and calls instruments around each pass.

Instruments (timing, memory, IR dumps, progress) hook the manager, never the passes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import psutil

from .errors import PassError
from .ir import Model, TensorNode
from .measure import peak_rss_bytes
from .passes_base import Pass, PassContext, PassStats


class Instrument:
    def before_pass(self, p: Pass, model: Model) -> None: ...

    def after_pass(self, p: Pass, model: Model, stats: PassStats) -> None: ...


class TimingInstrument(Instrument):
    """Seconds spent in each pass (measured by the manager), RSS after it and peak RSS so far."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def after_pass(self, p: Pass, model: Model, stats: PassStats) -> None:
        self.records.append({
            "pass": p.spec(), "seconds": round(stats.seconds, 3),
            "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1),
            "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1)})


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
    def __init__(self, passes: list[Pass], instruments: list[Instrument] | None = None,
                 ctx: PassContext | None = None) -> None:
        self.passes = passes
        self.instruments = list(instruments or [])
        self.ctx = ctx or PassContext()
        self.ctx.pipeline = list(passes)
        for p in passes:
            p.ctx = self.ctx
        self.check()

    def check(self) -> None:
        have: set[str] = {"calibrated"} if self.ctx.calib is not None else set()
        for p in self.passes:
            missing = p.requires - have
            if missing:
                raise PassError(f"pass '{p.name}' requires {', '.join(sorted(missing))}, which no earlier pass provides",
                                hint="reorder the pipeline or add the providing pass before it")
            have |= p.provides

    def run(self, model: Model) -> list[PassStats]:
        """Run each pass over the whole model, one pass after another."""
        self.prepare(model)
        return [self._run_one(p, model) for p in self.passes]

    def prepare(self, model: Model) -> None:
        """Keep the source weights, then let every pass check its inputs before any works."""
        self.ctx.capture(model)
        for p in self.passes:
            p.prepare(model)

    def _run_one(self, p: Pass, model: Model) -> PassStats:
        for ins in self.instruments:
            ins.before_pass(p, model)
        t0 = time.perf_counter()
        stats = p.run(model)
        stats.seconds = time.perf_counter() - t0
        for ins in self.instruments:
            ins.after_pass(p, model, stats)
        return stats

    @property
    def streamable(self) -> bool:
        """Analysis passes first, then only local transforms, and no whole-IR dumps."""
        n = sum(1 for p in self.passes if p.analysis)
        return (all(p.analysis for p in self.passes[:n]) and all(p.local for p in self.passes[n:])
                and not any(isinstance(i, IRDumpInstrument) for i in self.instruments))

    def stream(self, model: Model, results: list[PassStats]) -> Iterator[TensorNode]:
        """Run the whole pipeline on one tensor at a time, yielding each finished tensor.

        Only for local passes: memory then holds one tensor's work, not the whole model's.
        `results` receives one PassStats per pass; instruments see every pass start before
        the first tensor and end after the last.
        """
        self.prepare(model)
        analysis = [p for p in self.passes if p.analysis]
        transforms = self.passes[len(analysis):]
        results.extend(self._run_one(p, model) for p in analysis)
        tstats = [PassStats(p.spec()) for p in transforms]
        results.extend(tstats)
        for p in transforms:
            for ins in self.instruments:
                ins.before_pass(p, model)
        for node in list(model):
            for p, stats in zip(transforms, tstats):
                if p.matches(node):
                    t0 = time.perf_counter()
                    p.apply(node, stats)
                    stats.seconds += time.perf_counter() - t0
                    if p.on_tensor is not None:
                        p.on_tensor(node.name)
            yield node
        for p, stats in zip(transforms, tstats):
            for ins in self.instruments:
                ins.after_pass(p, model, stats)
