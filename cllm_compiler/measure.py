"""Measurement records: every number in a validation report says where it came from.

A value is `measured` (with the meter that read it), `estimated` (with the model that produced
it), or `not_measured` (with the reason). Reports never hold a bare number whose origin a reader
would have to guess. `machine_facts()` records what the numbers were measured on.
"""
from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def measured(value: float, unit: str, meter: str, **extra: Any) -> dict[str, Any]:
    return {"value": value, "unit": unit, "status": "measured", "meter": meter, **extra}


def estimated(value: float, unit: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"value": value, "unit": unit, "status": "estimated", "model": model, **extra}


def not_measured(unit: str, reason: str) -> dict[str, Any]:
    return {"value": None, "unit": unit, "status": "not_measured", "reason": reason}


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy for short lists."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def distribution(samples: Iterable[float], unit: str, meter: str) -> dict[str, Any]:
    """p50/p95/mean/CV of repeated measurements, with the samples kept for plots."""
    xs = [float(x) for x in samples]
    if not xs:
        return not_measured(unit, "no samples")
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    p50 = quantile(xs, 0.5)
    return {**measured(p50, unit, meter), "p50": p50, "p95": quantile(xs, 0.95),
            "mean": mean, "cv": sd / mean if mean else 0.0, "repeats": len(xs), "samples": xs}


def kv_cache_bytes(config: Any, contexts: Iterable[int], bytes_per_value: int) -> dict[str, Any]:
    """K and V for every layer at each context length (the runtimes' dense cache layout)."""
    per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * bytes_per_value
    return estimated({str(n): per_token * n for n in contexts}, "bytes",
                     f"2 x layers x kv_heads x head_dim x {bytes_per_value} B x context (dense cache layout)",
                     per_token_bytes=per_token)


def weight_stream_bytes(model: Any) -> int:
    """Weight bytes a runtime streams per decoded token: codes before entropy coding (decoded at load)."""
    return sum(getattr(n.rep, "nominal_bits", n.rep.storage_bits)() for n in model) // 8


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _gpu() -> dict[str, Any] | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        return {"name": name.decode() if isinstance(name, bytes) else name,
                "driver": str(pynvml.nvmlSystemGetDriverVersion()),
                "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000}
    except Exception:  # no NVML, no GPU, no driver: all mean "no GPU facts"
        return None


def machine_facts() -> dict[str, Any]:
    """CPU, threads, memory, GPU and power mode of the machine running the measurements."""
    import psutil
    facts: dict[str, Any] = {
        "hostname": platform.node(), "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "threads": int(os.environ.get("CLLM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "gpu": _gpu(),
        "cpufreq_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "python": platform.python_version(),
    }
    from .energy.jetson import power_mode
    facts["power_mode"] = power_mode()
    return facts


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started running its own program: VmHWM, the
    high-water mark of its address space. Not getrusage's ru_maxrss, which Linux carries across
    exec: a compile started by a large parent (a benchmark that had evaluated a model, a notebook)
    would report the parent's size at fork as its own peak."""
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: the best there is
