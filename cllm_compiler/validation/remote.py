"""Validation on another machine: over TVM RPC (the package runs there, logits come back), or
over SSH (the artifact is copied and `cllm-validate --device local` runs there, JSON comes back).
Every remote step is bounded by the device's timeouts; a failure is a TargetError naming the
device and the step, and the caller still writes a report saying what was not measured."""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any, Callable

from ..devices import Device
from ..errors import TargetError
from ..measure import distribution, machine_facts, not_measured
from .equivalence import Tolerance


def validate_rpc(folder: Path, dev: Device, tokens: int, prompt: int, repeats: int,
                 on_step: Callable[[str], None]) -> dict[str, Any]:
    from ..backends.tvm_backend import PACKAGE_DIR
    from ..backends.tvm_rpc import RemoteSession
    from ..validate import estimates, quality
    from ..backends.tvm_run import read_manifest
    pkg = folder / PACKAGE_DIR
    man = read_manifest(pkg)
    on_step(f"connecting to {dev.address} and uploading {pkg} ({man['target']})")
    sess = RemoteSession(dev.rpc(), pkg, timeout=dev.timeout_s)
    on_step("connected; measuring latency on the device")
    lat = sess.latency(prompt, repeats)
    on_step(f"scoring {tokens} WikiText-2 tokens (logits back over RPC)")
    q = quality(folder / "model.cllm", sess.logits, tokens)
    sess.close()
    tol = Tolerance()
    ok = q["kld_mean"] <= tol.kld_mean and q["top1_agree"] >= tol.top1
    meter = f"TVM time_evaluator on the device's clock ({dev.address})"
    pre = distribution(lat["prefill_samples_ms"], "ms", meter)
    est = estimates(man, pkg)
    return {"device": dev.public(), "machine": {"arch": "remote", "cpu_model": f"TVM RPC device {dev.address}",
                                              "cpu_count": None, "threads": None, "host": machine_facts()},
            "latency": {"tvm (device)": {"prefill_ms": pre, "ttft_ms": {**pre, "note": "prefill yields the first token"},
                                         "decode_ms_per_token": distribution(lat["decode_samples_ms"], "ms/token", meter),
                                         "prompt_tokens": prompt, "new_tokens": 1, "prefill_tok_s": lat["prefill_tok_s"],
                                         "decode_tok_s": lat["decode_tok_s"]}},
            "equivalence": {"tokens": q["tokens"], "backends": {"torch": {"status": "run", "exact": True},
                                                                "tvm (device)": {"status": "run", "exact": True}},
                            "pairs": [{"a": "torch", "b": "tvm (device)", "kld_mean": q["kld_mean"], "kld_max": q["kld_max"],
                                       "top1_agree": q["top1_agree"], "ppl_a": q["ppl_torch"], "ppl_b": q["ppl_device"],
                                       "checked": True, "pass": ok}],
                            "tolerance": {"kld_mean": tol.kld_mean, "top1": tol.top1}, "passed": ok,
                            "checked_pairs": 1, "verdict": ("pass" if ok else "fail") + f": torch~tvm (device) KLD "
                            f"{q['kld_mean']:.2e}, top-1 {q['top1_agree']:.3f}"},
            "energy": {"measured": not_measured("J/token", est["energy"])},
            "memory": {"device_memory": {"value": est["memory_mib"] * 2**20, "unit": "bytes", "status": "estimated",
                                         "model": est["memory_label"]}}}


def _run(cmd: list[str], timeout: float, what: str, dev: Device) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TargetError(f"device '{dev.name}' ({dev.address}) did not finish {what} within {timeout:.0f} s",
                          hint="is it reachable and awake? raise timeout_s in the device registry") from None
    except FileNotFoundError:
        raise TargetError(f"'{cmd[0]}' is not installed here, so device '{dev.name}' cannot be reached over SSH",
                          hint="install an OpenSSH client") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1][:300]
        raise TargetError(f"device '{dev.name}' ({dev.address}) failed while {what}: {last}",
                          hint="check `ssh " + dev.address + "` works without a password prompt (BatchMode), "
                               "and that cllm is installed there")
    return r.stdout


def validate_ssh(folder: Path, dev: Device, extra_args: list[str], on_step: Callable[[str], None]) -> dict[str, Any]:
    opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(dev.connect_timeout_s)}"]
    remote = f"{dev.remote_dir.rstrip('/')}/{folder.resolve().name}"
    on_step(f"ssh {dev.address}: preparing {dev.remote_dir}")
    _run(["ssh", *opts, dev.address, f"mkdir -p {shlex.quote(dev.remote_dir)}"], dev.connect_timeout_s + 30,
         "connecting", dev)
    on_step(f"copying {folder} to {dev.address}:{remote}")
    _run(["scp", "-q", "-r", *opts, str(folder), f"{dev.address}:{dev.remote_dir}/"], dev.timeout_s * 4,
         "copying the artifact", dev)
    on_step("validating on the device (cllm-validate --device local)")
    # remote_command is the registry's shell text (e.g. '~/venv/bin/cllm-validate'); the rest is quoted
    cmd = " ".join([dev.remote_command, *(shlex.quote(x) for x in [remote, "--device", "local", "--json", "-", *extra_args])])
    text = _run(["ssh", *opts, dev.address, cmd], dev.timeout_s * 10, "validating", dev)
    try:
        rec = json.loads(text[text.index("{"):])
    except ValueError:
        raise TargetError(f"device '{dev.name}' returned no JSON report", hint="run the command there by hand") from None
    rec["device"] = dev.public()
    return rec


def unreachable(dev: Device, why: str, target: Any, weight_bytes: int) -> dict[str, Any]:
    """The validation section when the device could not be used: nothing measured, estimates kept."""
    from ..energy import estimate
    nm = f"device '{dev.name}' ({dev.transport} {dev.address}) not reached: {why}"
    return {"device": {**dev.public(), "error": why}, "machine": {"arch": "unknown", "cpu_model": "unknown",
                                                                  "cpu_count": None, "threads": None},
            "latency": {"device": {"status": "not_measured", "reason": nm}},
            "energy": {"measured": not_measured("J/token", nm), "estimate": estimate(target, weight_bytes)},
            "memory": {"device_memory": not_measured("bytes", nm)}}
