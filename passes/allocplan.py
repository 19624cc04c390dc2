"""The allocator's plan on disk: `allocation.json` in the artifact folder (the per-tensor choices
and the notes that report them), and its reuse by `allocate{cache=...}` when everything the plan
depends on is the same: the model's weights, the calibration, allocate's settings and the passes
after it (training passes aside: they do nothing while the allocator simulates candidates)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_bytes
from ..errors import PassError
from ..passes_base import Pass
from ..safeio import read_json

PLAN_FILE = "allocation.json"


def plan_key(p: Pass, later: list[Pass]) -> dict[str, Any]:
    """What the plan depends on. The calibration's key names the model's weights (file hash or
    fingerprint) and the text, so they are not hashed a second time here."""
    from .trainingpass import TrainingPass
    return {"calibration": p.ctx.calib.key if p.ctx.calib is not None else None,
            "allocate": {k: v for k, v in p.args.items() if k not in ("cache", "workers")},
            "later": [q.spec() for q in later if not isinstance(q, TrainingPass)]}


def save_plan(folder: Path, key: dict, plan: dict[str, dict], notes: list[str]) -> None:
    doc = {"key": key, "plan": plan, "notes": notes}
    write_bytes(folder / PLAN_FILE, json.dumps(doc, sort_keys=True, indent=1).encode())


def load_plan(spec: str, key: dict, plans: list[dict], names: set[str]) -> tuple[dict, list[str]] | None:
    """(plan, notes) saved at `spec` (a file or a folder holding one) from exactly `key` for exactly
    the tensors `names`, each choice one of `plans`; None otherwise (a file that does not parse or
    fit is recomputed, never trusted)."""
    path = Path(spec)
    path = path / PLAN_FILE if path.is_dir() else path
    try:
        doc = read_json(path, 16 << 20, what=f"allocation cache {path}", error=PassError)
    except PassError:
        return None
    plan, notes = doc.get("plan"), doc.get("notes")
    if (json.dumps(doc.get("key"), sort_keys=True) != json.dumps(key, sort_keys=True) or not isinstance(plan, dict)
            or set(plan) != names or any(v not in plans for v in plan.values())
            or not isinstance(notes, list) or not all(isinstance(x, str) for x in notes)):
        return None
    return plan, notes
