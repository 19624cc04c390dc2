"""Energy on NVIDIA GPUs: NVML's total-energy counter (millijoules since driver load, Volta+).

`EnergyMeter` reads the counter before and after a block of work, so J/token is measured, not
estimated. Where NVML or the counter is missing (no GPU, an old GPU, no nvidia-ml-py) it says so
in `reason` and reports no number: a figure without a meter behind it would be a guess.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Energy:
    joules: float | None
    seconds: float
    source: str  # "nvml total-energy counter (GPU i)" or why there is no number

    def per(self, count: int) -> float | None:
        return None if self.joules is None or count <= 0 else self.joules / count


class EnergyMeter:
    """with EnergyMeter(index) as e: ...; then e.result (an Energy)."""

    def __init__(self, index: int = 0) -> None:
        self.index, self.handle, self.reason = index, None, ""
        self._nvml: Any = None
        try:
            import pynvml  # nvidia-ml-py
            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # probe: not all GPUs count energy
            self._nvml = pynvml
        except ImportError:
            self.reason = "no energy reading: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
        except Exception as e:  # pynvml raises NVMLError_* subclasses for every missing piece
            self.handle = None
            self.reason = f"no energy reading: NVML unavailable ({type(e).__name__}: {e})"
        self.result = Energy(None, 0.0, self.reason)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def _read_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def __enter__(self) -> "EnergyMeter":
        import time
        self._t0 = time.perf_counter()
        self._e0 = self._read_mj() if self.available else 0
        return self

    def __exit__(self, *exc: object) -> None:
        import time
        dt = time.perf_counter() - self._t0
        if self.available:
            self.result = Energy((self._read_mj() - self._e0) / 1000.0, dt,
                                 f"nvml total-energy counter (GPU {self.index})")
        else:
            self.result = Energy(None, dt, self.reason)


def power_draw_w(index: int = 0) -> float | None:
    """Instantaneous board power in watts (for an idle-draw baseline), or None without NVML."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(index)) / 1000.0
    except Exception:
        return None
