"""NVIDIA GPUs: NVML's total-energy counter (nvmlDeviceGetTotalEnergyConsumption, millijoules
since the driver loaded; Volta and newer). Read before and after: J/token from the delta."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import CounterReader


class NvmlReader(CounterReader):
    name = "nvml total-energy counter"
    unit_j = 1e-3  # NVML counts millijoules

    def __init__(self, index: int = 0, read_mj: Callable[[], int] | None = None) -> None:
        """`read_mj` replaces the driver call (tests replay recorded counter values)."""
        self.index, self._read, self._why = index, read_mj, None
        if read_mj is None:
            self._read = self._nvml_reader()
        self.name = f"nvml total-energy counter (GPU {index})"

    def _nvml_reader(self) -> Callable[[], int] | None:
        try:
            import pynvml  # nvidia-ml-py
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # probe: not every GPU counts energy
        except ImportError:
            self._why = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return None
        except Exception as e:  # NVMLError_* for no driver, no GPU, unsupported counter
            self._why = f"NVML unavailable ({type(e).__name__}: {e})"
            return None
        return lambda: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))

    def probe(self) -> str | None:
        return self._why if self._read is None else None

    def counters(self) -> dict[str, tuple[int, int | None]]:
        assert self._read is not None
        return {f"gpu{self.index}": (self._read(), None)}  # 64-bit mJ: never wraps in practice

    def facts(self) -> dict[str, Any]:
        return {"meter": self.name, "scope": "whole GPU board (all processes on it)"}
