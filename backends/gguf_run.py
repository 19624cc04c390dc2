"""Run a GGUF in llama.cpp (llama-cpp-python, CPU): logits for the shared evaluator, text
generation, and prefill/decode speed. One thread by default (see README: two threads on a
2-core box made llama.cpp 12-25x slower)."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import BackendError
from .ggml_lib import INSTALL_HINT


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise BackendError("llama-cpp-python is not installed: the GGUF cannot be run here",
                           hint=INSTALL_HINT) from None
    return llama_cpp


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """llama.cpp logs to fd 2 from C; silence it unless CLLM_LLAMA_LOG is set."""
    if os.environ.get("CLLM_LLAMA_LOG"):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class LlamaCppModel:
    """A GGUF in llama.cpp that the torch evaluator can call like an HF model: x [1, T] -> .logits."""

    def __init__(self, path: Path, n_ctx: int = 2048, threads: int | None = None, logits_all: bool = True,
                 kv_type: str = "f32") -> None:
        """kv_type f32 by default: llama.cpp's f16 KV cache alone flips ~0.2% of top-1 predictions
        against an fp32 reference (measured on SmolLM2), which would hide real weight differences."""
        llama_cpp = _llama_cpp()
        threads = threads or int(os.environ.get("CLLM_THREADS", "1"))
        kv = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}[kv_type]
        with _quiet():
            try:
                self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), logits_all=logits_all,
                                           n_threads=threads, n_threads_batch=threads, verbose=False,
                                           type_k=kv, type_v=kv)
            except ValueError as e:
                raise BackendError(f"llama.cpp cannot load {path}: {e}",
                                   hint="run with CLLM_LLAMA_LOG=1 to see llama.cpp's own message") from None
        self.n_ctx = n_ctx

    def __call__(self, x: torch.Tensor) -> SimpleNamespace:
        ids = x[0].tolist()
        if len(ids) > self.n_ctx:
            raise BackendError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        self.llm.reset()
        with _quiet():
            self.llm.eval(ids)
        logits = np.array(self.llm.scores[:len(ids)], dtype=np.float32)
        return SimpleNamespace(logits=torch.from_numpy(logits)[None])

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=special)

    def generate(self, prompt: str, max_tokens: int = 32) -> str:
        with _quiet():
            out = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1)
        return out["choices"][0]["text"]

    def chat(self, message: str, max_tokens: int = 64) -> str:
        """One user turn through the GGUF's own chat template (tokenizer.chat_template)."""
        with _quiet():
            out = self.llm.create_chat_completion([{"role": "user", "content": message}], max_tokens=max_tokens,
                                                  temperature=0.0, top_k=1)
        return out["choices"][0]["message"]["content"]

    def speed(self, prompt: list[int], new_tokens: int = 64) -> dict[str, float]:
        """Prefill tokens/s over `prompt`, then greedy decode tokens/s for `new_tokens`."""
        llm = self.llm
        llm.reset()
        with _quiet():
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            tok = int(np.argmax(llm.scores[len(prompt) - 1]))
            for _ in range(new_tokens):
                llm.eval([tok])
                tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            t2 = time.perf_counter()
        return {"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": new_tokens / (t2 - t1)}

    def close(self) -> None:
        self.llm.close()
