"""NVIDIA Jetson: on-module power rails (INA3221 monitors) via hwmon sysfs or `tegrastats`.

Rails measure the module's input (VDD_IN on Orin Nano/NX) and its parts; they exclude the carrier
board (fan, USB, NVMe), so the report says so. The power mode (`nvpmodel -q`) and whether
`jetson_clocks` pinned the clocks change J/token several-fold, so both are recorded with it.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from . import Reading, SamplingReader, integrate

HWMON_GLOB = "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # the module's input where the board has such a rail
SCOPE = "Jetson module rails (INA3221); excludes the carrier board"
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW")


def total_of(rails: dict[str, float]) -> tuple[float, str]:
    """The module input rail when there is one, else the sum of all rails (AGX Orin has none)."""
    for name in TOTAL_RAILS:
        if name in rails:
            return rails[name], name
    return sum(rails.values()), "sum of rails"


class HwmonReader(SamplingReader):
    name = f"hwmon ina3221 rails ({SCOPE})"

    def __init__(self, root: Path | None = None, interval: float = 0.05) -> None:
        super().__init__(interval)
        self.root = root

    def dirs(self) -> list[Path]:
        if self.root is not None:
            return [self.root]
        import glob
        return [Path(p) for p in sorted(glob.glob(HWMON_GLOB))]

    def rails(self) -> dict[str, float]:
        """label -> watts, from inN_input (mV) x currN_input (mA)."""
        out = {}
        for d in self.dirs():
            for label in sorted(d.glob("in*_label")):
                n = label.name[2:-6]
                volt, curr = d / f"in{n}_input", d / f"curr{n}_input"
                if volt.exists() and curr.exists():
                    out[label.read_text().strip()] = int(volt.read_text()) * int(curr.read_text()) / 1e6
        return out

    def probe(self) -> str | None:
        if not self.dirs():
            return f"no INA3221 hwmon directory ({HWMON_GLOB}): not a Jetson, or an old L4T"
        try:
            return None if self.rails() else "INA3221 hwmon has no readable rails (inN_label/inN_input/currN_input)"
        except (OSError, ValueError) as e:
            return f"cannot read INA3221 hwmon rails ({e})"

    def power_w(self) -> tuple[float, dict[str, float]]:
        rails = self.rails()
        return total_of(rails)[0], rails


def parse_tegrastats(line: str) -> dict[str, float]:
    """Rail name -> instant watts from one tegrastats line ('VDD_IN 5263mW/5263mW': instant/average)."""
    return {m.group(1): int(m.group(2)) / 1000 for m in _RAIL.finditer(line)}


class TegrastatsReader(SamplingReader):
    name = f"tegrastats rails ({SCOPE})"

    def __init__(self, command: list[str] | None = None, interval: float = 0.1) -> None:
        super().__init__(interval)
        self.command = command or ["tegrastats", "--interval", str(int(interval * 1000))]

    def probe(self) -> str | None:
        if shutil.which(self.command[0]) is None:
            return f"'{self.command[0]}' not found (not a Jetson, or L4T tools not installed)"
        return None

    def power_w(self) -> tuple[float, dict[str, float]]:  # not polled: tegrastats pushes lines
        raise NotImplementedError

    def start(self) -> None:
        self.samples, self._rails, self._lines = [], {}, 0
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        self._th = threading.Thread(target=self._read, daemon=True)
        self._th.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            rails = parse_tegrastats(line)
            if rails:
                self.samples.append((time.perf_counter(), total_of(rails)[0]))
                for k, v in rails.items():
                    self._rails.setdefault(k, []).append(v)

    def stop(self) -> Reading:
        self._proc.terminate()
        self._proc.wait(5)
        self._th.join(5)
        if len(self.samples) < 2:
            raise OSError(f"tegrastats gave {len(self.samples)} power line(s): the run was shorter than its interval")
        return integrate(self.samples, self.name, self._rails)


def parse_nvpmodel(text: str) -> str | None:
    """'NV Power Mode: 15W' from `nvpmodel -q` output."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    return m.group(1) if m else None


def clocks_pinned(cpufreq: Path = Path("/sys/devices/system/cpu/cpu0/cpufreq")) -> bool | None:
    """jetson_clocks sets each CPU's minimum frequency to its maximum; None when unreadable."""
    try:
        return (cpufreq / "scaling_min_freq").read_text().strip() == (cpufreq / "scaling_max_freq").read_text().strip()
    except OSError:
        return None


def power_mode() -> dict[str, Any] | None:
    """Jetson power mode facts, or None when this is not a Jetson."""
    if shutil.which("nvpmodel") is None:
        return None
    try:
        q = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        q = ""
    return {"nvpmodel": parse_nvpmodel(q), "jetson_clocks": clocks_pinned(), "rails_scope": SCOPE}
