"""Numerical checks of CPU kernels on a CPU this machine is not: build one kernel for aarch64
(Jetson's Cortex-A78AE) or for x86-64 with AVX2 only, link it statically with kernel_runner.c, run
it under qemu (qemu-aarch64, or qemu-x86_64 emulating a Haswell, which has AVX2 + FMA and no
AVX-512: an instruction it lacks is SIGILL there, as on such a laptop) and compare with numpy. No
TVM runtime is needed: the runner passes DLTensors straight to the kernel's packed-function entry
point."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError

CROSS_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
# machine -> (C compiler, emulator command, apt packages)
MACHINES = {"aarch64": (CROSS_CC, [QEMU], "gcc-aarch64-linux-gnu qemu-user"),
            "x86-avx2": ("gcc", ["qemu-x86_64", "-cpu", "Haswell-v4"], "gcc qemu-user")}
_DL = {"i": 0, "u": 1, "f": 2}


def jetson_host() -> dict[str, Any]:
    """The Jetson targets' CPU (targets.toml), for which the kernels are checked."""
    from ..targets import get_target
    return dict(get_target("jetson-orin-nano-8gb").extra["tvm_target"]["host"])


def missing_tools(machine: str = "aarch64") -> list[str]:
    """The missing tools (empty when the check can run)."""
    cc, emu, _ = MACHINES[machine]
    return [t for t in (cc, emu[0]) if shutil.which(t) is None]


def x86_avx2_target() -> dict[str, Any]:
    from ..targets import get_target
    return dict(get_target("x86-avx2").extra["tvm_target"])


def build_runner(func: Any, workdir: Path, target: dict[str, Any] | None = None, machine: str = "aarch64") -> Path:
    """Compile `func` (a scheduled PrimFunc) for `target` and link the static qemu runner."""
    import tvm
    import tvm_ffi
    cc, _, packages = MACHINES[machine]
    missing = missing_tools(machine)
    if missing:
        raise BackendError(f"{', '.join(missing)} not found", hint=f"apt-get install {packages}")
    if target is None:
        target = jetson_host() if machine == "aarch64" else x86_avx2_target()
    obj = workdir / "kernel.o"
    tvm.tirx.build(func.with_attr("global_symbol", "main"), target=tvm.target.Target(target)).write_to_file(str(obj))
    src = resources.files(__package__).joinpath("kernel_runner.c")
    exe = workdir / "kernel_runner"
    inc = Path(tvm_ffi.__file__).parent / "include"
    res = subprocess.run([cc, "-O2", "-static", f"-I{inc}", str(src), str(obj), "-o", str(exe), "-lm"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise BackendError(f"linking the {machine} runner failed: {res.stderr.strip()[-400:]}")
    return exe


def run_kernel(exe: Path, arrays: list[np.ndarray], out_shape: tuple[int, ...], out_dtype: str = "float32",
               timeout: float = 120.0, machine: str = "aarch64") -> np.ndarray:
    """Run the kernel under qemu with `arrays` as inputs; return its output."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for i, a in enumerate([*arrays, np.zeros(out_shape, out_dtype)]):
            path = Path(tmp) / f"arg{i}.bin"
            np.ascontiguousarray(a).tofile(path)
            lines.append(f"{path} {_DL[a.dtype.kind]} {a.dtype.itemsize * 8} {a.ndim} {' '.join(map(str, a.shape))}")
        spec = Path(tmp) / "spec.txt"
        spec.write_text("\n".join(lines) + "\n")
        res = subprocess.run([*MACHINES[machine][1], str(exe), str(spec)], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise BackendError(f"{machine} kernel failed under qemu (exit {res.returncode}): {res.stderr.strip()[-400:]}")
        return np.fromfile(Path(tmp) / f"arg{len(arrays)}.bin", dtype=out_dtype).reshape(out_shape)
