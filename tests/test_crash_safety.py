"""SIGKILL at random moments of a ~200 MB container write: the final path never holds a
partial file (slow: `pytest -m slow`)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cllm_compiler.container import read_container
from cllm_compiler.errors import ContainerError

pytestmark = pytest.mark.slow

WRITER = """
import sys, torch
from cllm_compiler.container import write_container
from tests.containers import small_model
from cllm_compiler.ir import TensorNode
from cllm_compiler.reprs import Dense
m = small_model()
for i in range(12):  # 12 x 4M float32 = ~200 MB of payload
    shape = (2048, 2048)
    m.add(TensorNode(f"model.layers.{i}.extra.weight", shape,
                     Dense(shape, "f32", data=torch.full(shape, float(i)))))
print("start", flush=True)
write_container(m, sys.argv[1])
print("done", flush=True)
"""


def test_fifty_sigkills(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    final = tmp_path / "m.cllm"
    # One full run to learn how long a write takes.
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WRITER, str(final)], env=env, check=True, capture_output=True, cwd=root)
    full = time.perf_counter() - t0
    read_container(final)
    final.unlink()
    rng = np.random.default_rng(7)
    outcomes = {"absent": 0, "complete": 0}
    for _ in range(50):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], env=env, cwd=root,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdout.readline()  # imports done; the write is under way
        time.sleep(float(rng.uniform(0, full * 0.8)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if final.exists():
            try:
                read_container(final)  # verify=True: whole-file and per-tensor hashes
            except ContainerError as e:  # a partial file at the final path would be a failure
                pytest.fail(f"partial file at the final path: {e}")
            outcomes["complete"] += 1
            final.unlink()
        else:
            outcomes["absent"] += 1
    assert sum(outcomes.values()) == 50
    # The next write cleans the orphans the killed writers left.
    subprocess.run([sys.executable, "-c", WRITER, str(final)], env=env, check=True, capture_output=True, cwd=root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cllm"]
