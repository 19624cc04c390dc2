"""Training recipes: YAML (yaml.safe_load) into frozen dataclasses, with errors that name the key.

  model: default                 # or an HF folder / .gguf (loaded through cllm's own loaders)
  data: [../shared/data/train]   # text files or folders of .txt; the last 5% of each is held out
  steps: 200
  batch: 8
  seq_len: 512
  lr: 5.0e-5
  qat: {bits: [8, 6, 4, 3], group: 128, rate_lambda: 0.01, kd_weight: 1.0}
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrainError
from ..safeio import SMALL, load_yaml, read_text, short
from .qat import QATConfig


@dataclass(frozen=True)
class TrainConfig:
    model: str = "default"
    data: tuple[str, ...] = ()
    steps: int = 100
    batch: int = 4
    seq_len: int = 256
    lr: float = 5e-5
    scale_lr: float = 1e-3        # LSQ log-scales: a step changes a scale by ~0.1%
    warmup: int = 10
    holdout: float = 0.05
    eval_batches: int = 4
    ckpt_every: int = 50
    log_every: int = 10
    export_bits: int | None = None
    device: str = "cpu"
    seed: int = 0
    qat: QATConfig = field(default_factory=QATConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise TrainError(f"recipe section '{where.rstrip('.') or 'top'}' is a {type(d).__name__}, not a mapping",
                         hint="write key: value lines under it")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(d) - set(names))
    if unknown:
        raise TrainError(f"unknown recipe key '{where}{unknown[0][:60]}'", hint=f"known: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    out = {k: _build(QATConfig, v or {}, "qat.") if k == "qat" else _typed(hints[k], v, where + k)
           for k, v in d.items()}
    return cls(**out)


def _typed(hint: Any, v: Any, key: str) -> Any:
    """`v` as the field's declared type, or a TrainError naming the key (a recipe is user input:
    `steps: [1]` or `lr: .inf` must not reach the trainer)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if v is None and type(None) in typing.get_args(hint):
        return None
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return _typed(args[0], v, key)
    if typing.get_origin(hint) is tuple:
        items = list(v) if isinstance(v, (list, tuple)) else [v] if not isinstance(v, (dict, type(None))) else None
        if items is None or (Ellipsis not in args and len(items) != len(args)) or len(items) > 64:
            raise TrainError(f"recipe key '{key}' must be a list of {len(args) if Ellipsis not in args else 'some'} "
                             f"{args[0].__name__} values, not {short(v)}", hint="e.g. bits: [4, 3]")
        return tuple(_typed(args[0], x, key) for x in items)
    if hint is dict:
        if not isinstance(v, dict) or any(not isinstance(x, (int, float, str, bool)) for x in v.values()):
            raise TrainError(f"recipe key '{key}' must be a mapping of plain values, not {short(v)}")
        return {str(k): x for k, x in v.items()}
    ok = (isinstance(v, bool) if hint is bool else
          isinstance(v, int) and not isinstance(v, bool) if hint is int else
          isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) if hint is float else
          isinstance(v, str) and len(v) < 4096 if hint is str else False)
    if not ok:
        kind = {int: "whole number", float: "finite number", bool: "true or false", str: "text"}[hint]
        raise TrainError(f"recipe key '{key}' must be a {kind}, not {short(v)}", hint="see docs/training.md")
    return float(v) if hint is float else v


def load_recipe(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        raw = load_yaml(read_text(Path(path), SMALL, what=f"recipe {path}", error=TrainError),
                        f"recipe {path}", TrainError) or {}
        if not isinstance(raw, dict):
            raise TrainError(f"{path} must hold a mapping of recipe keys", hint="see docs/training.md")
    raw |= {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = _build(TrainConfig, raw, "")
    q = cfg.qat
    if not q.bits or any(not 2 <= b <= 8 for b in q.bits):
        raise TrainError(f"qat.bits {list(q.bits)} must be bit-widths between 2 and 8")
    if q.nm is not None and not (len(q.nm) == 2 and 0 < q.nm[0] < q.nm[1] <= 8):
        raise TrainError(f"qat.nm {q.nm} must be [n, m] with 0 < n < m <= 8", hint="e.g. nm: [2, 4]")
    if not (1 <= cfg.steps <= 10**8 and 1 <= cfg.batch <= 4096 and 8 <= cfg.seq_len <= 1 << 17):
        raise TrainError("steps, batch and seq_len must be positive (seq_len >= 8)")
    if not (cfg.lr > 0 and cfg.scale_lr >= 0 and 0 <= cfg.holdout < 1 and cfg.warmup >= 0 and
            cfg.eval_batches >= 1 and cfg.ckpt_every >= 1 and cfg.log_every >= 1 and q.group >= 1):
        raise TrainError("lr must be > 0, holdout in [0, 1), warmup >= 0, and eval_batches, ckpt_every, "
                         "log_every and qat.group >= 1", hint="see docs/training.md for each key")
    if q.codebook is not None:
        known = {"bits", "d", "scope", "group", "iters"}
        if set(q.codebook) - known:
            raise TrainError(f"qat.codebook has unknown keys {sorted(set(q.codebook) - known)}",
                             hint=f"known: {', '.join(sorted(known))}")
    if cfg.export_bits is not None and cfg.export_bits not in q.bits:
        raise TrainError(f"export_bits {cfg.export_bits} is not one of qat.bits {list(q.bits)}")
    return cfg
