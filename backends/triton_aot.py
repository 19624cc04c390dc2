"""Ahead-of-time compilation of the Triton kernels for a GPU architecture, without a GPU.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` runs Triton's whole
pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin) for sm_80 (A100), sm_87 (Jetson Orin),
sm_89 (RTX 4090) or sm_90 (H100): CI proves every kernel specialisation compiles for every
target it ships to, and a package records what each kernel costs (registers are decided by
ptxas; shared memory and spills are reported from its metadata).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import BackendError
from .triton_layout import Spec
from .triton_ops import config_for, constexprs

ARCHS = (80, 87, 89, 90)
POINTERS = {"x_ptr": None, "out_ptr": "fp32", "q_ptr": "i32", "s_ptr": "fp16", "z_ptr": "u8", "m_ptr": "fp16",
            "lut_ptr": "fp32", "c_ptr": "u8", "idx_ptr": "i32", "w_ptr": "fp16", "t_ptr": "fp32", "u_ptr": "fp16"}
SCALARS = ("M", "N", "K", "stride_xm", "k_per_split")


@dataclass(frozen=True)
class Compiled:
    name: str
    arch: int
    cubin: bytes
    shared: int
    ptx_lines: int
    ptx_target: str  # the PTX .target line: sm_80, sm_87, sm_90a ...

    def report(self) -> dict[str, Any]:
        return {"kernel": self.name, "arch": f"sm_{self.arch}", "cubin_bytes": len(self.cubin),
                "shared_bytes": self.shared, "ptx_lines": self.ptx_lines, "ptx_target": self.ptx_target}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_name(spec: Spec, m: int) -> str:
    return f"mm_{spec.tag()}_b{m}".replace("+", "_")  # the tag names no shape: kernels are shape-generic


def compile_spec(spec: Spec, m: int, arch: int, act: str = "fp16") -> Compiled:
    """Compile the kernel a batch of `m` rows runs for this weight, for sm_<arch>."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .triton_kernels import mm_kernel
    cfg = config_for(spec, m)
    ce = constexprs(spec, cfg, torch.float16 if act == "fp16" else torch.float32)
    names = mm_kernel.arg_names
    sig: dict[str, str] = {p: "*" + (t or act) for p, t in POINTERS.items()}
    sig |= {s: "i32" for s in SCALARS} | {k: "constexpr" for k in ce}
    src = ASTSource(mm_kernel, sig, constexprs={(names.index(k),): v for k, v in ce.items()})
    try:
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": cfg.get("num_warps", 4), "num_stages": cfg.get("num_stages", 2)})
    except Exception as e:  # Triton raises CompilationError, RuntimeError (ptxas), ...
        raise BackendError(f"Triton could not compile {kernel_name(spec, m)} for sm_{arch}: {e}",
                           hint="a Triton version mismatch is the usual cause; pip install -e .[cuda]") from e
    ptx = k.asm["ptx"]
    target = next((ln.split()[1] for ln in ptx.splitlines() if ln.startswith(".target")), "?")
    return Compiled(kernel_name(spec, m), arch, k.asm["cubin"], int(k.metadata.shared), ptx.count("\n"), target)


def compile_all(specs: list[Spec], arch: int, batches: tuple[int, ...] = (1, 16)) -> list[Compiled]:
    """Each distinct kernel compiled once: shapes are runtime arguments, so every weight of one
    format and batch bucket shares a kernel whatever its size. A process that runs kernels in
    Triton's interpreter cannot also generate code (the interpreter replaces Triton's builder),
    so there the work goes to a clean subprocess."""
    import torch
    if interpreting():
        return _compile_in_subprocess(specs, arch, batches)
    seen: dict[tuple, Compiled] = {}
    for spec in specs:
        for m in batches:
            key = tuple(sorted(constexprs(spec, config_for(spec, m), torch.float16).items()))
            if key not in seen:
                seen[key] = compile_spec(spec, m, arch)
    return list(seen.values())


def _compile_in_subprocess(specs: list[Spec], arch: int, batches: tuple[int, ...]) -> list[Compiled]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    job = json.dumps({"arch": arch, "batches": list(batches), "specs": [asdict(s) for s in specs]})
    r = subprocess.run([sys.executable, "-m", __name__], input=job, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"ahead-of-time Triton compile for sm_{arch} failed: {last}",
                           hint="run python -m cllm_compiler.backends.triton_aot by hand to see the whole error")
    out = []
    for d in json.loads(r.stdout):
        d["cubin"] = base64.b64decode(d["cubin"])
        out.append(Compiled(**d))
    return out


def _main() -> None:
    job = json.loads(sys.stdin.read())
    specs = [Spec(**{**d, "nm": tuple(d["nm"])}) for d in job["specs"]]
    res = compile_all(specs, int(job["arch"]), tuple(job["batches"]))
    json.dump([asdict(c) | {"cubin": base64.b64encode(c.cubin).decode()} for c in res], sys.stdout)


if __name__ == "__main__":
    _main()
