"""report.json (checked against report.schema.json) and the self-contained report.html."""
from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from ..atomic import write_bytes
from ..errors import CllmError


def schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("report.schema.json").read_text())


def check(report: dict[str, Any]) -> None:
    """CllmError naming the first place where the report breaks its schema."""
    import jsonschema
    v = jsonschema.Draft202012Validator(schema())
    errors = sorted(v.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise CllmError(f"report.json breaks its schema at {where}: {e.message[:300]}",
                        hint="a cllm bug: please report it with the report file")


def records(doc: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, record) for every measurement record in a report section."""
    if isinstance(doc, dict):
        if doc.get("status") in ("measured", "estimated", "not_measured") and "unit" in doc:
            yield path, doc
        for k, v in doc.items():
            yield from records(v, f"{path}/{k}" if path else k)


def not_measured(validation: dict[str, Any]) -> list[str]:
    """One line per value that was not measured, with its reason (what the report must say)."""
    out = [f"{p}: {r['reason']}" for p, r in records(validation) if r["status"] == "not_measured"]
    for name, b in (validation.get("equivalence") or {}).get("backends", {}).items():
        if b["status"] == "not_run":
            out.append(f"equivalence/{name}: {b['reason']}")
    for name, v in (validation.get("latency") or {}).items():
        if v.get("status") == "not_measured" and "unit" not in v:
            out.append(f"latency/{name}: {v['reason']}")
    return out


def write_reports(folder: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Check and write report.json and report.html atomically into `folder`."""
    from .html import render
    if "validation" in report:
        report["validation"]["not_measured"] = not_measured(report["validation"])
    check(report)
    write_bytes(folder / "report.json", json.dumps(report, indent=1).encode())
    write_bytes(folder / "report.html", render(report).encode())
    return folder / "report.json", folder / "report.html"
