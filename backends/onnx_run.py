"""Run an exported model in onnxruntime (CPU EP, one thread unless asked): the evaluator's model
interface (whole-window logits), greedy generation with the KV cache, and tokens/s."""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import BackendError


class OrtModel:
    def __init__(self, folder: Path, threads: int | None = None, max_len: int = 2048) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed", hint="pip install -e .[onnx]") from None
        from ..safeio import read_json, regular_file
        man = read_json(folder / "onnx.json", inside=folder, error=BackendError)
        try:
            self.layers, self.kv_heads, self.head_dim = (int(man[k]) for k in ("layers", "kv_heads", "head_dim"))
            model_file = regular_file(folder / str(man["file"]), inside=folder, error=BackendError)
        except (KeyError, TypeError, ValueError):
            raise BackendError(f"{folder / 'onnx.json'} is not an ONNX manifest cllm wrote",
                               hint="the artifact is damaged; compile it again") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or int(os.environ.get("CLLM_THREADS", "1"))
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
        self.n_ctx = self.max_len = max_len

    def _empty(self, batch: int) -> np.ndarray:
        return np.zeros((self.layers, batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)

    def run(self, ids: np.ndarray, pk: np.ndarray, pv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.sess.run(None, {"input_ids": ids.astype(np.int64), "past_keys": pk, "past_values": pv})

    def __call__(self, x: torch.Tensor) -> SimpleNamespace:
        logits, _, _ = self.run(x.numpy(), self._empty(x.shape[0]), self._empty(x.shape[0]))
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def generate_ids(self, prompt: list[int], new_tokens: int, eos: int | None = None) -> list[int]:
        logits, pk, pv = self.run(np.array([prompt]), self._empty(1), self._empty(1))
        out: list[int] = []
        while len(out) < new_tokens:
            out.append(int(np.argmax(logits[0, -1])))
            if out[-1] == eos or pk.shape[3] >= self.max_len:
                break
            logits, pk, pv = self.run(np.array([[out[-1]]]), pk, pv)
        return out

    def speed(self, prompt: list[int], new_tokens: int = 64) -> dict[str, float]:
        t0 = time.perf_counter()
        logits, pk, pv = self.run(np.array([prompt]), self._empty(1), self._empty(1))
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            logits, pk, pv = self.run(np.array([[int(np.argmax(logits[0, -1]))]]), pk, pv)
        t2 = time.perf_counter()
        return {"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": new_tokens / (t2 - t1)}

    def close(self) -> None:
        self.sess = None
