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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrainError
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


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise TrainError(f"unknown recipe key '{where}{unknown[0]}'", hint=f"known: {', '.join(sorted(names))}")
    out = {}
    for k, v in d.items():
        if k == "qat":
            out[k] = _build(QATConfig, v or {}, "qat.")
        elif isinstance(v, list):
            out[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        else:
            out[k] = v
    if "nm" in out and out["nm"] is not None:
        out["nm"] = tuple(out["nm"])
    try:
        return cls(**out)
    except TypeError as e:
        raise TrainError(f"recipe section '{where or 'top'}': {e}") from e


def load_recipe(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    import yaml
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise TrainError(f"{path} does not exist", hint="give a recipe YAML (see docs/training.md)") from None
        except yaml.YAMLError as e:
            raise TrainError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from e
        if not isinstance(raw, dict):
            raise TrainError(f"{path} must hold a mapping of recipe keys")
    raw |= {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = _build(TrainConfig, raw, "")
    q = cfg.qat
    if not q.bits or any(not 2 <= b <= 8 for b in q.bits):
        raise TrainError(f"qat.bits {list(q.bits)} must be bit-widths between 2 and 8")
    if q.nm is not None and not (len(q.nm) == 2 and 0 < q.nm[0] < q.nm[1] <= 8):
        raise TrainError(f"qat.nm {q.nm} must be [n, m] with 0 < n < m <= 8", hint="e.g. nm: [2, 4]")
    if cfg.steps < 1 or cfg.batch < 1 or cfg.seq_len < 8:
        raise TrainError("steps, batch and seq_len must be positive (seq_len >= 8)")
    if cfg.export_bits is not None and cfg.export_bits not in q.bits:
        raise TrainError(f"export_bits {cfg.export_bits} is not one of qat.bits {list(q.bits)}")
    return cfg
