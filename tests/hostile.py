"""Hostile inputs for issue 22: a micro Llama built with transformers' own classes, GGUF bytes
written field by field (so a header can claim anything), and a runner that executes each
probe in a forked child of one warmed-up process under a time and memory limit.

The runner (``python -m tests.hostile CASES.json RESULTS.json``) imports the CLIs once, then
forks per case: the child caps its address space at +1 GiB, arms a 10 s alarm, runs the CLI's
``main(argv)`` with stdout/stderr in files and exits with its code. The parent records exit
status, wall time and the child's peak RSS growth over the parent's.
"""
from __future__ import annotations

import json
import os
import resource
import struct
import sys
import time
from pathlib import Path
from typing import Any

MICRO = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=128, rope_theta=10000.0)


def micro_tokenizer_json(vocab: int = 64) -> str:
    """A word-level tokenizer with exactly `vocab` entries (the model's vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<unk>", "the", "a", "of", "and", "to", "in", "is", "."] + [f"w{i}" for i in range(vocab)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words[:vocab])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


def micro_hf(path: Path, seed: int = 0, **cfg: Any) -> Path:
    """A 1-layer Llama folder saved by transformers itself (config.json, model.safetensors)."""
    import torch
    import transformers
    torch.manual_seed(seed)
    conf = transformers.LlamaConfig(**{**MICRO, **cfg})
    model = transformers.AutoModelForCausalLM.from_config(conf)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    (path / "tokenizer.json").write_text(micro_tokenizer_json(conf.vocab_size))
    (path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    return path


# GGUF written by hand: gguf-py's writer refuses the contradictions these tests need.
U8, U32, F32, BOOL, STR, ARR, U64 = 0, 4, 6, 7, 8, 9, 10


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, value: Any) -> bytes:
    head = _s(key) + struct.pack("<I", vtype)
    if vtype == U32:
        return head + struct.pack("<I", value)
    if vtype == U64:
        return head + struct.pack("<Q", value)
    if vtype == F32:
        return head + struct.pack("<f", value)
    if vtype == BOOL:
        return head + struct.pack("<B", value)
    if vtype == STR:
        return head + _s(value)
    etype, items, count = value  # (element type, encoded items, claimed count)
    return head + struct.pack("<IQ", etype, count) + items


def micro_gguf_parts(cfg: dict[str, Any] | None = None, nan: bool = False) -> tuple[list[bytes], list[tuple[str, list[int], bytes]]]:
    """(key-value records, [(gguf tensor name, dims, f32 bytes)]) of a valid micro Llama GGUF."""
    import numpy as np
    c = {**MICRO, **(cfg or {})}
    h, f, v, heads, kvh = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = h // heads
    kvs = [kv("general.architecture", STR, "llama"), kv("llama.block_count", U32, c["num_hidden_layers"]),
           kv("llama.embedding_length", U32, h), kv("llama.feed_forward_length", U32, f),
           kv("llama.attention.head_count", U32, heads), kv("llama.attention.head_count_kv", U32, kvh),
           kv("llama.context_length", U32, c["max_position_embeddings"]),
           kv("llama.rope.freq_base", F32, c["rope_theta"]), kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
           kv("llama.vocab_size", U32, v)]
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (v, h), "output_norm.weight": (h,), "output.weight": (v, h)}
    for i in range(c["num_hidden_layers"]):
        shapes |= {f"blk.{i}.attn_norm.weight": (h,), f"blk.{i}.ffn_norm.weight": (h,),
                   f"blk.{i}.attn_q.weight": (heads * hd, h), f"blk.{i}.attn_k.weight": (kvh * hd, h),
                   f"blk.{i}.attn_v.weight": (kvh * hd, h), f"blk.{i}.attn_output.weight": (h, heads * hd),
                   f"blk.{i}.ffn_gate.weight": (f, h), f"blk.{i}.ffn_up.weight": (f, h), f"blk.{i}.ffn_down.weight": (h, f)}
    tensors = []
    for name, shape in shapes.items():
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if nan and name == "blk.0.ffn_up.weight":
            a[0, 0] = np.nan
        tensors.append((name, list(reversed(shape)), a.tobytes()))
    return kvs, tensors


def gguf_bytes(kvs: list[bytes], tensors: list[tuple[str, list[int], bytes]], *, offsets: list[int] | None = None,
               n_tensors: int | None = None, n_kv: int | None = None, qtype: int = 0) -> bytes:
    """A GGUF v3 file; `offsets`, the counts and the type may be forged."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv) + b"".join(kvs)
    data, offs = b"", []
    for _, _, raw in tensors:
        offs.append(len(data))
        data += raw + b"\0" * (-len(raw) % 32)
    for (name, dims, _), off in zip(tensors, offsets or offs):
        out += _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", qtype, off)
    return out + b"\0" * (-len(out) % 32) + data


# --- the runner -------------------------------------------------------------------------------
CLIS = ("compile", "eval", "run", "train", "inspect", "validate", "decode")


def status_kib(field: str) -> int:
    """A KiB figure of this process from /proc/self/status (VmRSS, VmSize, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _child(case: dict[str, Any], out: Path) -> None:
    import importlib
    soft = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, ((status_kib("VmSize") << 10) + (1 << 30), soft[1]))
    signal_alarm(case.get("limit_s", 10))
    fd_out = os.open(out / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fd_err = os.open(out / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd_out, 1)
    os.dup2(fd_err, 2)
    os.chdir(case.get("cwd", "."))
    mod = importlib.import_module(f"cllm_compiler.cli.{case['cli']}")
    try:
        rc = mod.main(case["argv"])
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def signal_alarm(seconds: int) -> None:
    import signal
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(seconds)


def run_cases(cases: list[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    import importlib
    for name in CLIS:
        importlib.import_module(f"cllm_compiler.cli.{name}")
    import cllm_compiler.compiler  # noqa: F401  (warm: the children share these pages)
    import cllm_compiler.load_gguf  # noqa: F401
    import cllm_compiler.training.train  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from cllm_compiler.eval_guard import _wikitext
    _wikitext()  # the 8-gram index every training probe checks its text against, built once
    results = []
    for i, case in enumerate(cases):
        out = work / f"case{i}"
        out.mkdir(parents=True, exist_ok=True)
        base = status_kib("VmRSS")
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            try:
                _child(case, out)
            finally:
                os._exit(99)
        _, status, usage = os.wait4(pid, 0)
        results.append({"id": case["id"], "seconds": time.perf_counter() - t0,
                        "rc": os.waitstatus_to_exitcode(status), "rss_growth_mib": max(0, usage.ru_maxrss - base) / 1024,
                        "stderr": (out / "stderr").read_text(errors="replace")[-4000:],
                        "stdout": (out / "stdout").read_text(errors="replace")[-2000:]})
    return results


if __name__ == "__main__":
    cases = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run_cases(cases, Path(sys.argv[3]))))
