"""Compile a synthetic ~4 GiB checkpoint in a subprocess: the compile's peak RSS stays within the
process's footprint once cllm and torch are imported + the largest tensor + 128 MiB of working
memory (slow: `pytest -m slow`). The import footprint is measured, not assumed: torch alone is
~280 MiB of VmHWM here and varied enough between machines to fail a fixed 256 MiB allowance."""
import json
import os
import struct
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

DIM = 8192  # every weight is 8192 x 8192 float32 = 256 MiB

CHILD = """
import sys
from cllm_compiler.cli.compile import main
import cllm_compiler.passes, cllm_compiler.codecs  # everything the compile imports, before it starts
base = next(l for l in open("/proc/self/status") if l.startswith("VmRSS"))
print(int(base.split()[1]))
rc = main([sys.argv[1], "-o", sys.argv[2], "--eval-windows", "0", "--no-lower",
           "-p", "quant{bits=4,group=128,match=linear|embed|lm_head},entropy{codec=auto}"])
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(int(hwm.split()[1]))
sys.exit(rc)
"""


def _write_safetensors(path, names):
    """Stream a safetensors file tensor by tensor (save_file would hold all 4 GiB). Norms (names
    ending in "norm.weight") are [DIM] ones, every other tensor [DIM, DIM]."""
    shape = {n: [DIM] if n.endswith("norm.weight") else [DIM, DIM] for n in names}
    header, off = {}, 0
    for n in names:
        nbytes = 4 * DIM * (DIM if len(shape[n]) == 2 else 1)
        header[n] = {"dtype": "F32", "shape": shape[n], "data_offsets": [off, off + nbytes]}
        off += nbytes
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    g = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for n in names:
            t = torch.ones(DIM) if len(shape[n]) == 1 else torch.randn(DIM, DIM, generator=g) * 0.02
            f.write(t.numpy().tobytes())


def test_four_gib_checkpoint_streams(tmp_path):
    src = tmp_path / "synth"
    src.mkdir()
    layers = 2
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{m}.weight" for i in range(layers)
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")]
    (src / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "vocab_size": DIM, "hidden_size": DIM, "intermediate_size": DIM,
        "num_hidden_layers": layers, "num_attention_heads": 64, "num_key_value_heads": 64,
        "tie_word_embeddings": False}))
    _write_safetensors(src / "model.safetensors", names)
    size = (src / "model.safetensors").stat().st_size
    assert size >= 4 * 2**30  # 16 tensors of 256 MiB
    out = tmp_path / "art"
    # Peak = the child's VmHWM: unlike ru_maxrss it starts afresh at exec, so this test process's
    # own memory (it just generated 4 GiB) is not counted.
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    base_mib, peak_mib = int(lines[0]) / 1024, int(lines[-1]) / 1024
    largest_mib = DIM * DIM * 4 / 2**20
    report = json.loads((out / "report.json").read_text())
    budget = base_mib + largest_mib + 128
    print(f"\nsource {size / 2**30:.2f} GiB, artifact {report['artifact_bytes'] / 2**20:.0f} MiB, "
          f"peak RSS {peak_mib:.0f} MiB = imports {base_mib:.0f} + {peak_mib - base_mib:.0f} "
          f"(budget {budget:.0f} MiB: imports + largest tensor {largest_mib:.0f} + 128)")
    assert report["streamed"]
    assert peak_mib <= budget
