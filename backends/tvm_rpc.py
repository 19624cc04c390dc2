"""Hardware in the loop over TVM RPC: upload a package to a device's RPC server, run it there,
measure latency (time_evaluator on the device's clock), and bring logits back for quality.

Every remote step runs under a watchdog: a device that dies or stops answering gives a
BackendError after `timeout` seconds instead of a hang. What RPC cannot measure (device memory,
energy) is reported as "not measured" or as a labelled estimate from the target table.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from ..errors import BackendError

T = TypeVar("T")


def bounded(fn: Callable[[], T], timeout: float, what: str,
            hint: str = "the RPC server may have died or been killed; check the device") -> T:
    """Run fn in a daemon thread; BackendError if it raises or takes longer than `timeout`."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below in the caller's thread
            box["error"] = e
    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise BackendError(f"the device did not answer within {timeout:.0f} s while {what}",
                           hint="is the RPC server alive? (raise --timeout for slow devices)")
    if "error" in box:
        e = box["error"]
        raise BackendError(f"the device failed while {what}: {str(e).strip().splitlines()[-1][:300]}",
                           hint=hint) from None
    return box["value"]


class RemoteSession:
    """A TVM package running on an RPC device."""

    def __init__(self, device: dict[str, Any], package: Path, timeout: float = 60.0) -> None:
        from tvm import rpc
        from .tvm_run import TvmModel, read_manifest
        self.timeout, self.device = timeout, device
        self.sess = bounded(lambda: rpc.connect(device["host"], device["port"], session_timeout=0),
                            min(timeout, 30.0), f"connecting to {device['url']}",
                            hint="is TVM's RPC server running there? start it on the device with "
                                 f"`python -m tvm.exec.rpc_server --host 0.0.0.0 --port {device['port']}`")
        man = read_manifest(package)
        self.gpu = man["tvm_target"]["kind"] == "cuda"
        self.model = bounded(lambda: TvmModel(package, session=self.sess, gpu=self.gpu),
                             timeout * 4, "uploading the package and weights")

    def logits(self, ids: list[int]) -> np.ndarray:
        return bounded(lambda: self.model.logits(ids), self.timeout, "computing logits")

    def latency(self, prompt: int, repeats: int) -> dict[str, Any]:
        """Prefill (prompt tokens) and decode (one token at position `prompt`) latency on the
        device's own clock: p50/p95 over `repeats`."""
        import tvm
        m = self.model

        def measure(fn: str, n: int, pos: int) -> list[float]:
            ids = tvm.runtime.tensor(np.arange(n, dtype=np.int32) % m.vocab, m.dev)
            f = m.vm.time_evaluator(fn, m.dev, number=1, repeat=repeats)
            return list(f(ids, m.shape([pos]), m.cache, *m.params).results)
        pre = bounded(lambda: measure("prefill", prompt, 0), self.timeout, "timing prefill")
        dec = bounded(lambda: measure("decode", 1, prompt), self.timeout, "timing decode")
        q = lambda xs, p: float(np.percentile(np.array(xs) * 1e3, p))  # noqa: E731
        return {"prefill_ms_p50": q(pre, 50), "prefill_ms_p95": q(pre, 95), "decode_ms_p50": q(dec, 50),
                "decode_ms_p95": q(dec, 95), "prefill_tok_s": prompt / (q(pre, 50) / 1e3),
                "decode_tok_s": 1e3 / q(dec, 50), "prompt_tokens": prompt, "repeats": repeats,
                "prefill_samples_ms": [x * 1e3 for x in pre], "decode_samples_ms": [x * 1e3 for x in dec],
                "label": f"measured on the device ({self.device['url']}) with TVM time_evaluator"}

    def close(self) -> None:
        self.model.close()
