"""x86 bare metal: RAPL through Linux powercap (/sys/class/powercap/intel-rapl:N/energy_uj, also
used by AMD Zen). Package zones only (their core/dram sub-zones are inside them). The counter
wraps at max_energy_range_uj, about every minute at a few hundred watts: deltas add the range
back once when the end value is below the start. Virtual machines usually have no RAPL."""
from __future__ import annotations

from pathlib import Path

from . import CounterReader

POWERCAP = Path("/sys/class/powercap")


class RaplReader(CounterReader):
    name = "rapl powercap energy_uj"
    unit_j = 1e-6

    def __init__(self, root: Path = POWERCAP) -> None:
        self.root = root

    def zones(self) -> list[Path]:
        """Top-level package zones (intel-rapl:0, intel-rapl:1, ...), not their sub-zones."""
        return sorted(p for p in self.root.glob("intel-rapl:*") if p.name.count(":") == 1)

    def probe(self) -> str | None:
        zones = self.zones()
        if not zones:
            return f"no RAPL zones under {self.root} (a VM, a non-x86 CPU, or powercap not loaded)"
        try:
            self.counters()
        except PermissionError:
            return f"{zones[0]}/energy_uj is not readable (root only since Linux 5.10: run as root or chmod)"
        except (OSError, ValueError) as e:
            return f"cannot read {zones[0]}/energy_uj ({e})"
        return None

    def counters(self) -> dict[str, tuple[int, int | None]]:
        out: dict[str, tuple[int, int | None]] = {}
        for z in self.zones():
            name = (z / "name").read_text().strip() if (z / "name").exists() else z.name
            rng = z / "max_energy_range_uj"
            out[f"{z.name}:{name}"] = (int((z / "energy_uj").read_text()),
                                        int(rng.read_text()) if rng.exists() else None)
        return out
