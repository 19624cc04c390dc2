"""Per-layer results of `reconstruct`, so that an interrupted compile resumes by layer.

One safetensors file per finished layer (`layer007.safetensors`): each trained tensor's record
(codes, fp16 scales, zero points or mins) and the layer's norm weights, with the key of what
produced it (model hash, every pass up to `reconstruct`, the text's hash). A folder holding a
file with another key (another model, pipeline or text: a run resumed with other settings) is
refused before any work; one whose key matches but whose contents do not fit the model is
refused when read. Writes are atomic; nothing else in the folder is touched.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import PassError
from ..reprs import Quantized
from ..safeio import parse_json, regular_file
from .blockwise import BlockResult

Done = tuple[dict[str, Quantized], dict[str, torch.Tensor], BlockResult]


class LayerCache:
    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = Path(folder), key

    def path(self, layer: int) -> Path:
        return self.folder / f"layer{layer:03d}.safetensors"

    def check(self, layers: int) -> None:
        """Refuse a folder that holds layers made by another run: resuming would mix two models."""
        from safetensors import SafetensorError, safe_open
        mine = json.loads(self.key)
        for i in range(layers):
            path = self.path(i)
            if not path.exists():
                continue
            regular_file(path, what=f"resume file {path}", error=PassError)
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = parse_json((f.metadata() or {}).get("cllm", "{}"), f"resume file {path}", error=PassError)
                theirs = parse_json(str(meta.get("key", "{}")), f"resume file {path}", error=PassError)
            except (OSError, ValueError, SafetensorError) as e:
                raise PassError(f"resume file {path} cannot be read ({e})",
                                hint="give another resume= folder, or delete the damaged layer file") from None
            differ = [k for k in ("model", "pipeline", "text") if not isinstance(theirs, dict) or theirs.get(k) != mine[k]]
            if differ:
                what = {"model": "another model", "pipeline": "other pass settings", "text": "another text"}
                raise PassError(f"resume folder {self.folder} holds layers made from {', '.join(what[k] for k in differ)} "
                                f"({path.name})", hint="give another resume= folder for these settings, or delete its "
                                "layer*.safetensors to train from the start")

    def save(self, layer: int, keep: dict[str, Quantized], norms: dict[str, torch.Tensor], res: BlockResult) -> None:
        from safetensors.torch import save_file
        tensors: dict[str, torch.Tensor] = {}
        spec = {}
        for name, q in keep.items():
            tensors[f"{name}::codes"] = torch.from_numpy(np.ascontiguousarray(q.codes))
            tensors[f"{name}::scales"] = torch.from_numpy(np.ascontiguousarray(q.scales))
            if q.zeros is not None:
                tensors[f"{name}::zeros"] = torch.from_numpy(np.ascontiguousarray(q.zeros))
            if q.mins is not None:
                tensors[f"{name}::mins"] = torch.from_numpy(np.ascontiguousarray(q.mins))
            spec[name] = {"bits": q.bits, "group": q.group}
        tensors |= {f"{name}::norm": w.detach().contiguous() for name, w in norms.items()}
        meta = {"cllm": json.dumps({"key": self.key, "layer": layer, "tensors": spec,
                                    "result": [res.loss_before, res.loss_after, res.trained, res.tensors, res.loss_trained]}, sort_keys=True)}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PassError(f"reconstruct: cannot create resume folder {self.folder}: {e.strerror}",
                            hint="give resume= a folder you can write") from None
        with atomic_path(self.path(layer)) as tmp:
            save_file(dict(sorted(tensors.items())), str(tmp), metadata=meta)

    def load(self, layer: int, reps: dict[str, Quantized], norms: dict[str, torch.nn.Parameter]) -> Done | None:
        """The saved result of `layer` if it was made from exactly this key, else None."""
        from safetensors import safe_open
        path = self.path(layer)
        if not path.exists():
            return None
        regular_file(path, what=f"resume file {path}", error=PassError)
        with safe_open(str(path), framework="pt") as f:
            meta = parse_json((f.metadata() or {}).get("cllm", "{}"), f"resume file {path}", error=PassError)
            if meta.get("key") != self.key:
                return None
            try:
                keep = {name: self._record(f, name, rep) for name, rep in reps.items()}
                kept_norms = {name: self._tensor(f, f"{name}::norm", tuple(p.shape), p.dtype) for name, p in norms.items()}
                before, after, trained, count, raw = meta["result"]
                res = BlockResult(float(before), float(after), bool(trained), int(count), float(raw))
            except (KeyError, TypeError, ValueError) as e:
                raise PassError(f"resume file {path} does not fit this model ({e})",
                                hint="delete it (or give another resume= folder) to train this layer again") from None
        return keep, kept_norms, res

    def _record(self, f, name: str, rep: Quantized) -> Quantized:  # noqa: ANN001
        codes = self._tensor(f, f"{name}::codes", rep.codes.shape, torch.uint8).numpy()
        if int(codes.max(initial=0)) >= 1 << rep.bits:
            raise ValueError(f"{name}: codes beyond {rep.bits} bits")
        scales = self._tensor(f, f"{name}::scales", rep.scales.shape, torch.float16).numpy()
        zeros = None if rep.zeros is None else self._tensor(f, f"{name}::zeros", rep.zeros.shape, torch.uint8).numpy()
        mins = None if rep.mins is None else self._tensor(f, f"{name}::mins", rep.mins.shape, torch.float16).numpy()
        return Quantized(codes, scales, zeros, rep.bits, rep.group, mins)

    @staticmethod
    def _tensor(f, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:  # noqa: ANN001
        if key not in f.keys():
            raise KeyError(key)
        t = f.get_tensor(key)
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise ValueError(f"{key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
        return t
