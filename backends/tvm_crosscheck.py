"""Numerical checks of cross-compiled CPU kernels: build one kernel for aarch64 (Jetson's
Cortex-A78AE), link it statically with kernel_runner.c, run it under qemu-aarch64 and
compare with numpy. No aarch64 TVM runtime is needed: the runner passes DLTensors straight to
the kernel's packed-function entry point."""
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
_DL = {"i": 0, "u": 1, "f": 2}


def jetson_host() -> dict[str, Any]:
    """The Jetson targets' CPU (targets.toml), for which the kernels are checked."""
    from ..targets import get_target
    return dict(get_target("jetson-orin-nano-8gb").extra["tvm_target"]["host"])


def missing_tools() -> list[str]:
    """The missing tools (empty when the check can run)."""
    return [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]


def build_runner(func: Any, workdir: Path, target: dict[str, Any] | None = None) -> Path:
    """Compile `func` (a scheduled PrimFunc) for `target` and link the static qemu runner."""
    import tvm
    import tvm_ffi
    missing = missing_tools()
    if missing:
        raise BackendError(f"{', '.join(missing)} not found",
                           hint="apt-get install gcc-aarch64-linux-gnu qemu-user")
    obj = workdir / "kernel.o"
    tvm.tirx.build(func.with_attr("global_symbol", "main"), target=tvm.target.Target(target or jetson_host())).write_to_file(str(obj))
    src = resources.files(__package__).joinpath("kernel_runner.c")
    exe = workdir / "kernel_runner"
    inc = Path(tvm_ffi.__file__).parent / "include"
    res = subprocess.run([CROSS_CC, "-O2", "-static", f"-I{inc}", str(src), str(obj), "-o", str(exe), "-lm"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise BackendError(f"linking the aarch64 runner failed: {res.stderr.strip()[-400:]}")
    return exe


def run_kernel(exe: Path, arrays: list[np.ndarray], out_shape: tuple[int, ...], out_dtype: str = "float32",
               timeout: float = 120.0) -> np.ndarray:
    """Run the kernel under qemu with `arrays` as inputs; return its output."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for i, a in enumerate([*arrays, np.zeros(out_shape, out_dtype)]):
            path = Path(tmp) / f"arg{i}.bin"
            np.ascontiguousarray(a).tofile(path)
            lines.append(f"{path} {_DL[a.dtype.kind]} {a.dtype.itemsize * 8} {a.ndim} {' '.join(map(str, a.shape))}")
        spec = Path(tmp) / "spec.txt"
        spec.write_text("\n".join(lines) + "\n")
        res = subprocess.run([QEMU, str(exe), str(spec)], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise BackendError(f"aarch64 kernel failed under qemu: {res.stderr.strip()[-400:]}")
        return np.fromfile(Path(tmp) / f"arg{len(arrays)}.bin", dtype=out_dtype).reshape(out_shape)
