"""One checkpoint compiled for several targets in one run: each target gets its own plan, the
calibration statistics are collected once and reused, and a manifest links every artifact
(with its hashes) to the one source."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import check_replaceable, write_bytes, written_by_cllm
from .calibration import FILE as CALIB_FILE
from .errors import OutputError
from .loading import file_sha256
from .safeio import read_json
from .targets import Target

MANIFEST = "manifest.json"


def check_outputs(root: Path, targets: list[Target], force: bool) -> dict[str, Path]:
    """Folder per target; refuse before any work if one exists and --force was not given."""
    folders = {t.name: root / t.name for t in targets}
    taken = [str(p) for p in folders.values() if p.exists()]
    if taken and not force:
        raise OutputError(f"{taken[0]} already exists", hint="give --force to replace, or another -o folder")
    if (root / MANIFEST).exists() and not force:
        raise OutputError(f"{root / MANIFEST} already exists", hint="give --force to replace, or another -o folder")
    if (root / MANIFEST).exists() and not written_by_cllm(root):
        raise OutputError(f"{root / MANIFEST} is not a cllm multi-target manifest; --force replaces only cllm's "
                          "own output", hint="choose another -o folder")
    for p in folders.values():
        check_replaceable(p, force)  # every refusal before any work
    return folders


def artifact_entry(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Facts and file hashes of one artifact folder (relative paths)."""
    files = {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()
             and p.name not in ("report.html",)}
    return {"target": report["target"], "backend": report["backend"], "folder": folder.name,
            "pipeline": report["pipeline"], "plan": report.get("plan"), "bits_per_weight": report["bits_per_weight"],
            "artifact_bytes": report["artifact_bytes"], "model_cllm_sha256": files.get("model.cllm"),
            "manifest_sha256": files.get("manifest.json"), "files": files}


def write_manifest(root: Path, source: dict[str, Any], entries: list[dict[str, Any]]) -> Path:
    calib = {e["files"].get(CALIB_FILE) for e in entries} - {None}
    doc = {"format": "cllm-multi-target", "version": 1, "source": source,
           "calibration": {"shared": len(calib) <= 1, "sha256": sorted(calib),
                           "note": "collected once by the first target that calibrates, reused by the others"},
           "artifacts": entries}
    path = root / MANIFEST
    write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode())
    return path


def compile_targets(model_path: Path, targets: list[Target], root: Path, compile_one: Callable[..., Any],
                    force: bool, on_step: Callable[[str], None]) -> tuple[Path, list[Any]]:
    """compile_one(target, out, reuse) -> CompileResult, for each target in order."""
    folders = check_outputs(root, targets, force)
    root.mkdir(parents=True, exist_ok=True)
    results, entries, reuse = [], [], ()
    for t in targets:
        on_step(f"target {t.name} -> {folders[t.name]}")
        res = compile_one(t, folders[t.name], reuse)
        results.append(res)
        entries.append(artifact_entry(folders[t.name], res.report))
        if (folders[t.name] / CALIB_FILE).exists():
            reuse = (*reuse, folders[t.name])
    src = read_json(folders[targets[0].name] / "manifest.json")["source"]  # cllm's own, just written
    return write_manifest(root, src, entries), results
