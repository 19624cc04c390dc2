"""Run a TVM package (library + weights + tvm.json) on this host, or on a remote device over TVM RPC.

`TvmModel` is callable like a Hugging Face model (x [1, T] -> .logits) so the shared evaluator
scores it on the same windows as torch and llama.cpp; it also generates and times itself.
Prefill runs in chunks of `chunk` tokens: the attention scores of a chunk are chunk x context, and
128-token chunks prefilled a 512-token prompt 1.2x faster than one 512-token chunk (less of the
masked square computed and thrown away; the matmuls stay efficient at 128 rows).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..errors import BackendError

PACKAGE_MANIFEST = "tvm.json"
MAX_MANIFEST = 16 << 20


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / PACKAGE_MANIFEST
    try:
        with open(path, "rb") as f:  # bounded: a manifest is kilobytes, a hostile one may not be
            doc = json.loads(f.read(MAX_MANIFEST + 1)[:MAX_MANIFEST])
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return doc
    except FileNotFoundError:
        raise BackendError(f"{folder} holds no TVM package ({PACKAGE_MANIFEST} missing)",
                           hint="compile with --target host (this CPU) or another TVM target") from None
    except ValueError as e:  # JSONDecodeError, bad UTF-8, not an object
        raise BackendError(f"{path} is not a valid package manifest: {str(e)[:120]}",
                           hint="the package is damaged; recompile it") from None


def package_file(folder: Path, manifest: dict[str, Any], key: str) -> Path:
    """The package file `manifest[key]` names, checked before anything reads or loads it: a plain
    name inside the package (no path, no link out of it), a regular file whose sha256 is the one
    tvm.json records. A TVM package's library is native code: loading it runs it."""
    from ..loading import file_sha256
    name = manifest.get(key)
    hashes = manifest.get("sha256")
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise BackendError(f"{folder / PACKAGE_MANIFEST}: '{key}' must name a file inside the package, not {str(name)[:80]!r}",
                           hint="the package is damaged or not from cllm; recompile it")
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise BackendError(f"{path} is not a regular file of the package", hint="recompile the package")
    if not isinstance(hashes, dict) or name not in hashes:
        raise BackendError(f"{folder / PACKAGE_MANIFEST} records no sha256 for {name}",
                           hint="packages from before file hashes must be recompiled (cllm-compile ... --force)")
    if file_sha256(path) != hashes[name]:
        raise BackendError(f"{path}: sha256 differs from the one tvm.json records", hint="the package was changed "
                           "or damaged after it was built: recompile it, and run only packages you trust")
    return path


def load_weights(folder: Path, manifest: dict[str, Any]) -> list[np.ndarray]:
    from safetensors.numpy import load_file
    arrays = load_file(str(package_file(folder, manifest, "weights")))
    missing = [n for n in manifest["params"] if n not in arrays]
    if missing:
        raise BackendError(f"weights file lacks {missing[:3]}", hint="the package is damaged; recompile it")
    return [arrays[n] for n in manifest["params"]]


def set_threads(n: int) -> None:
    """Run TVM's thread pool (parallel loops of the kernels) at `n` threads in this process.
    The pool's size is fixed when it first starts (TVM_NUM_THREADS, else half the logical CPUs):
    start it with room for every CPU, then configure the count, so later models may use another."""
    import tvm
    os.environ.setdefault("TVM_NUM_THREADS", str(max(n, os.cpu_count() or 1)))
    tvm.get_global_func("runtime.config_threadpool")(1, n)  # 1: kBig, every core of a uniform CPU
    got = int(tvm.get_global_func("runtime.NumThreads")())
    if got < n:
        raise BackendError(f"TVM's thread pool runs at most {got} thread(s) in this process, not {n}",
                           hint="its size is fixed when it starts: set TVM_NUM_THREADS (or --threads) before the "
                                "first model runs")


class TvmModel:
    """A compiled package on a device: `session` is None for this host, else a TVM RPC session."""

    def __init__(self, folder: Path, session: Any = None, chunk: int = 128, threads: int | None = None,
                 gpu: bool = False) -> None:
        import tvm
        from tvm import relax
        self.threads = threads or int(os.environ.get("CLLM_THREADS", "1"))
        if session is None:
            set_threads(self.threads)
        self.folder, self.manifest = Path(folder), read_manifest(Path(folder))
        lib_path = package_file(self.folder, self.manifest, "library")  # checked before it is loaded anywhere
        if session is None:
            from .tvm_backend import host_missing_isa
            missing = host_missing_isa(self.manifest)
            if missing:
                raise BackendError(f"this CPU lacks {', '.join(missing)}, which the package was compiled for",
                                   hint="run it on a machine of its target, or recompile for another target")
            self.dev = tvm.cuda() if gpu else tvm.cpu()
            lib = tvm.runtime.load_module(str(lib_path))
        else:
            session.upload(str(lib_path))
            lib = session.load_module(lib_path.name)
            self.dev = session.cuda() if gpu else session.cpu()
        self.vm = relax.VirtualMachine(lib, self.dev)
        # positions are Relax shape values; over RPC a local Shape cannot travel, a remote one can
        self.shape = tvm.runtime.ShapeTuple if session is None else \
            (lambda dims, f=session.get_function("ffi.Shape"): f(*dims))
        self.params = [tvm.runtime.tensor(a, self.dev) for a in load_weights(self.folder, self.manifest)]
        c = self.manifest["config"]
        self.max_len, self.chunk, self.vocab = int(self.manifest["max_len"]), chunk, int(c["vocab_size"])
        from .tvm_kernels import cache_shape
        shape = cache_shape(c["num_layers"], c["num_kv_heads"], c["head_dim"], self.max_len)
        self.cache = tvm.runtime.tensor(np.zeros(shape, np.float32), self.dev)  # zeroed: see attention()
        self.n_ctx = self.max_len
        self._tvm = tvm

    def _run(self, fn: str, ids: list[int], pos: int) -> np.ndarray:
        if pos + len(ids) > self.max_len:
            raise BackendError(f"{pos + len(ids)} tokens exceed the package's context of {self.max_len}",
                               hint="the context (max_len in tvm.json) is fixed when the package is built: 2048 by default")
        tvm = self._tvm
        x = tvm.runtime.tensor(np.asarray(ids, np.int32), self.dev)
        return self.vm[fn](x, self.shape([pos]), self.cache, *self.params).numpy()

    def logits(self, ids: list[int], last_only: bool = False) -> np.ndarray:
        """Logits for `ids` from position 0 (the cache is overwritten)."""
        outs = []
        for start in range(0, len(ids), self.chunk):
            part = ids[start:start + self.chunk]
            outs.append(self._run("prefill" if last_only else "prefill_all", part, start))
        return np.concatenate(outs) if not last_only else outs[-1]

    def __call__(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.from_numpy(self.logits(x[0].tolist()))[None])

    def generate_ids(self, prompt: list[int], new_tokens: int, eos: int | None = None) -> list[int]:
        tok = int(np.argmax(self.logits(prompt, last_only=True)[-1]))
        out, pos = [tok], len(prompt)
        while len(out) < new_tokens and tok != eos and pos < self.max_len:
            tok = int(np.argmax(self._run("decode", [tok], pos)[-1]))
            out.append(tok)
            pos += 1
        return out

    def speed(self, prompt: list[int], new_tokens: int = 64) -> dict[str, float]:
        """Prefill tokens/s over `prompt`, then greedy decode tokens/s for `new_tokens`."""
        t0 = time.perf_counter()
        tok = int(np.argmax(self.logits(prompt, last_only=True)[-1]))
        t1 = time.perf_counter()
        for i in range(new_tokens):
            tok = int(np.argmax(self._run("decode", [tok], len(prompt) + i)[-1]))
        t2 = time.perf_counter()
        return {"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": new_tokens / (t2 - t1)}

    def close(self) -> None:
        self.params, self.cache, self.vm = [], None, None
