"""Batch-1 decode speed model of a target: a roofline over memory bandwidth *and* compute, labelled
as an estimate wherever it is shown.

Per token, decode reads every matmul weight once (the tied or untied head included), so

    t_memory  = weight bytes / min(bandwidth, threads x one core's streaming bandwidth)
    t_compute = sum over weights of params / (threads x GHz x weights per cycle of that kernel)
              + runtime overhead (per token + per layer: VM calls, attention, norms)
    tok/s     = 1 / max(t_memory, t_compute)

CPU targets carry `speed_model` facts in targets.toml: cores, GHz, one core's bandwidth and the
fused dequantize-GEMV throughput of cllm's kernels in weights per cycle per core (int8-activation
kernels and fp32 ones), measured by bench/tvm_bench.py. Other targets use their peak compute
(2 FLOPs per weight at compute_tflops). A bandwidth-only roofline was ~35x off on a CPU core.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import Target


def host_ghz(path: Path = Path("/proc/cpuinfo")) -> float | None:
    """The host's clock from cpuinfo's "cpu MHz" (what VMs report: nominal or current)."""
    try:
        text = path.read_bytes()[: 1 << 20].decode("ascii", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                return float(value) / 1000.0
            except ValueError:
                return None
    return None


Tensor = tuple[str, tuple[int, ...], str, int]  # role, shape, representation kind, bytes before entropy coding


def model_tensors(model: Any) -> list[Tensor]:
    """The facts the model needs, from an IR (an entropy-coded tensor is not decoded)."""
    return [(n.role, tuple(n.shape), getattr(n.rep, "inner_kind", n.rep.kind),
             getattr(n.rep, "nominal_bits", n.rep.storage_bits)() // 8) for n in model]


def container_tensors(path: Any) -> list[Tensor]:
    """The same facts from a .cllm's header alone: nothing decoded or paged in (a streaming compile
    of a large model must not hold its codes just to estimate a speed)."""
    from ..container import ContainerFile
    return [(r["role"], tuple(r["shape"]), r["rep"], sum(int(b["raw_length"]) for b in r["buffers"]))
            for r in ContainerFile(path).header["tensors"]]


def matmul_split(tensors: list[Tensor], tied: bool) -> tuple[int, dict[str, int]]:
    """(weight bytes read per token, params per kernel kind): the linear layers plus the head (the
    embedding when tied), as the decode GEMVs read them. Kinds: `int` (integer codes: the int8-
    activation kernels where the target has them), `lut` (codebooks: a table lookup per weight),
    `f32` (the rest)."""
    from ..ir import LINEAR_ROLES
    head = "embed" if tied else "lm_head"
    nbytes, counts = 0, {"int": 0, "lut": 0, "f32": 0}
    for role, shape, rep, size in tensors:
        if role in LINEAR_ROLES or role == head:
            nbytes += size
            counts[{"quant": "int", "codebook": "lut"}.get(rep, "f32")] += int(shape[0]) * int(shape[1])
    return nbytes, counts


def decode_estimate(target: Target, weight_bytes: int, counts: dict[str, int], layers: int,
                    threads: int = 1, int8: bool = False, on_host: bool = False) -> dict[str, Any]:
    """Estimated batch-1 decode tokens/s, as a measure.estimated record naming its model.
    `counts`: params per kernel kind (matmul_split); `int8`: integer codes run the int8 kernels;
    `on_host`: for this machine (its clock, `threads` cores) rather than the target's full device."""
    from ..measure import estimated
    sm = target.extra.get("speed_model")
    if not sm:
        t_mem = weight_bytes / (target.bandwidth_gbs * 1e9)
        t_cmp = 2.0 * sum(counts.values()) / (target.compute_tflops * 1e12)
        return estimated(1.0 / max(t_mem, t_cmp, 1e-12), "tokens/s",
                         f"roofline of {target.name}: max(weight bytes / {target.bandwidth_gbs:g} GB/s, "
                         f"2 FLOPs x params / {target.compute_tflops:g} TFLOPS)",
                         bound="memory" if t_mem >= t_cmp else "compute")
    cores = max(1, min(threads, os.cpu_count() or 1) if on_host else int(sm["cores"]))
    ghz = (host_ghz() or float(sm["ghz"])) if on_host else float(sm["ghz"])
    wpc = sm["weights_per_cycle"]
    per_s = cores * ghz * 1e9
    rates = {"int": per_s * float(wpc["int8" if int8 else "f32"]), "lut": per_s * float(wpc["lut"]),
             "f32": per_s * float(wpc["f32"])}
    overhead = (float(sm.get("token_overhead_us", 0.0)) + layers * float(sm.get("layer_overhead_us", 0.0))) * 1e-6
    bw = min(target.bandwidth_gbs, cores * float(sm["core_bandwidth_gbs"])) * 1e9
    t_mem = weight_bytes / bw
    t_cmp = sum(n / rates[k] for k, n in counts.items()) + overhead  # the VM calls stay serial
    where = f"this host, {cores} thread{'s' if cores > 1 else ''} at {ghz:.2f} GHz" if on_host \
        else f"{target.name}, {cores} cores at {ghz:g} GHz"
    return estimated(1.0 / max(t_mem, t_cmp), "tokens/s",
                     f"roofline for {where}: max(weight bytes / {bw / 1e9:.0f} GB/s, params / kernel throughput "
                     f"({wpc['int8' if int8 else 'f32']:g} weights/cycle/core for integer codes"
                     f"{' (int8 activations)' if int8 else ''}, {wpc['lut']:g} for codebooks, {wpc['f32']:g} fp32) "
                     f"+ runtime overhead)",
                     bound="memory" if t_mem >= t_cmp else "compute", threads=cores)
