"""Hardware in the loop over a real TVM RPC server on 127.0.0.1 (the x86 build stands in for a
device): cllm-validate end to end, and a server that dies or freezes mid-run gives a clear
error within the timeout instead of a hang."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cllm_compiler.compiler import compile_model
from cllm_compiler.errors import TargetError
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import get_target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcServer:
    """TVM's own RPC server (python -m tvm.exec.rpc_server) in its own process group."""

    def __init__(self) -> None:
        self.port = _free_port()
        env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--port-end", str(self.port + 1)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        t0 = time.time()
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if "bind to" in line or "listening" in line.lower():
                break
            if time.time() - t0 > 60:
                raise RuntimeError("RPC server did not start")
        self.url = f"rpc://127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        try:
            self.signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture(scope="module")
def artifact(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rpc") / "a"
    compile_model(tiny_dir, get_target("host"),
                  parse_pipeline("quant{bits=4,group=64},quant{bits=8,group=128,match=embed|lm_head},entropy"), out)
    return out


@pytest.fixture()
def server():
    s = RpcServer()
    yield s
    s.stop()


def test_validate_end_to_end_through_rpc(artifact, server, tmp_path):
    from cllm_compiler.cli.validate import main
    report_path = tmp_path / "r.json"
    rc = main([str(artifact), "--device", server.url, "--tokens", "96", "--prompt", "32", "--repeats", "3",
               "--json", str(report_path)])
    assert rc == 0
    r = json.loads(report_path.read_text())  # the validation section
    lat = r["latency"]["tvm (device)"]
    assert 0 < lat["decode_ms_per_token"]["p50"] <= lat["decode_ms_per_token"]["p95"] and lat["prefill_ms"]["p50"] > 0
    assert lat["decode_ms_per_token"]["repeats"] == 3 and "device's clock" in lat["prefill_ms"]["meter"]
    (pair,) = r["equivalence"]["pairs"]
    assert pair["kld_mean"] < 1e-6 and pair["top1_agree"] == 1.0 and abs(pair["ppl_b"] / pair["ppl_a"] - 1) < 1e-4
    assert r["memory"]["device_memory"]["status"] == "estimated"
    assert r["energy"]["measured"]["status"] == "not_measured" and r["energy"]["estimate"]["status"] == "estimated"
    full = json.loads((artifact / "report.json").read_text())
    assert full["validation"]["device"]["transport"] == "tvm-rpc" and (artifact / "report.html").is_file()


def _validate_proc(artifact: Path, url: str, timeout: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "cllm_compiler.cli.validate", str(artifact), "--device", url,
                             "--repeats", "100000", "--prompt", "64", "--timeout", str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.parametrize("how", ["kill", pytest.param("freeze", marks=pytest.mark.slow)])  # freeze waits out 15 s
def test_server_dying_mid_run_gives_clear_error(artifact, server, how):
    proc = _validate_proc(artifact, server.url, timeout=15)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if "measuring latency" in line:
            break
    time.sleep(1.0)  # inside the timed repeats on the server
    server.signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    t0 = time.time()
    try:
        rest, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
        if how == "freeze":
            server.signal(signal.SIGCONT)
    text = "".join(lines) + rest
    assert proc.returncode == 2, text
    assert "error:" in text and "Traceback" not in text
    assert ("did not answer within 15 s" in text) if how == "freeze" else ("device" in text)
    assert time.time() - t0 < 4 * 15 + 30


def test_device_addresses_and_registry(tmp_path):
    from cllm_compiler.devices import resolve
    assert resolve("rpc://10.0.0.2:9090").rpc()["port"] == 9090
    reg = tmp_path / "devices.toml"
    reg.write_text('[devices.orin]\nurl = "rpc://orin.local:9091"\ntarget = "jetson-orin-nano-8gb"\n')
    d = resolve("orin", reg)
    assert (d.rpc()["host"], d.rpc()["port"], d.target) == ("orin.local", 9091, "jetson-orin-nano-8gb")
    with pytest.raises(TargetError, match="not in"):
        resolve("xavier", reg)
    with pytest.raises(TargetError, match="bad device address"):
        resolve("rpc://nohostport")


def test_unreachable_device_is_a_clear_error(artifact, capsys):
    from cllm_compiler.cli.validate import main
    rc = main([str(artifact), "--device", f"rpc://127.0.0.1:{_free_port()}", "--timeout", "10"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "rpc_server" in err and "Traceback" not in err
    rep = json.loads((artifact / "report.json").read_text())["validation"]  # still written: what was not measured
    assert rep["latency"]["device"]["status"] == "not_measured" and any("not reached" in x for x in rep["not_measured"])
