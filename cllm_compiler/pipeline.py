"""Pipeline text and YAML recipes -> a list of configured passes.

Grammar: ``pass{key=value,key=value},pass,...``. Values are ints, floats, booleans or
bare strings; a string may hold '|' (role lists) but not ',' or '}'.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import PipelineError
from .passes_base import PASSES, Pass
from .safeio import SMALL, load_yaml, read_text, short

_ITEM = re.compile(r"\s*([A-Za-z_][\w-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def _value(text: str) -> Any:
    t = text.strip()
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_pipeline(text: str) -> list[Pass]:
    from . import builtin_passes  # noqa: F401  (registers passes)
    text = text.strip()
    if not text:
        raise PipelineError("empty pipeline", hint="e.g. \"quant{bits=4,group=128},entropy{codec=zstd}\"")
    passes, pos = [], 0
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise PipelineError(f"pipeline does not parse at character {pos}: {text[pos:pos + 30]!r}",
                                hint="write pass{key=value,...} items separated by commas")
        params: dict[str, Any] = {}
        for kv in filter(None, (m.group(2) or "").split(",")):
            if "=" not in kv:
                raise PipelineError(f"parameter '{kv.strip()}' of '{m.group(1)}' has no '='",
                                    hint="write key=value")
            k, v = kv.split("=", 1)
            params[k.strip()] = _value(v)
        passes.append(make_pass(m.group(1), params))
        pos = m.end()
    return passes


def make_pass(name: str, params: dict[str, Any]) -> Pass:
    from . import builtin_passes  # noqa: F401
    cls = PASSES.get(name)
    if cls is None:
        raise PipelineError(f"unknown pass '{name}'", hint=f"available passes: {', '.join(sorted(PASSES))}")
    return cls(**params)


def load_recipe(path: Path) -> list[Pass]:
    """A YAML recipe: ``pipeline:`` as a string, or a list of {pass: {params}} / "pass" items."""
    what = f"recipe {path}"
    doc = load_yaml(read_text(Path(path), SMALL, what=what, error=PipelineError), what, PipelineError)
    steps = doc.get("pipeline") if isinstance(doc, dict) else None
    if isinstance(steps, str):
        return parse_pipeline(steps)
    if not isinstance(steps, list) or not steps:
        raise PipelineError(f"recipe {path} needs a 'pipeline:' list or string",
                            hint="pipeline:\n  - quant: {bits: 4, group: 128}\n  - entropy: {codec: zstd}")
    out = []
    for step in steps:
        if isinstance(step, str):
            out.append(make_pass(step, {}))
        elif isinstance(step, dict) and len(step) == 1 and isinstance(next(iter(step.values())) or {}, dict):
            (name, params), = step.items()
            out.append(make_pass(str(name), {str(k): v for k, v in (params or {}).items()}))
        else:
            raise PipelineError(f"recipe step {short(step)} is not 'name' or {{name: {{params}}}}",
                                hint="pipeline:\n  - quant: {bits: 4, group: 128}")
    return out


def pipeline_text(passes: list[Pass]) -> str:
    return ",".join(p.spec() for p in passes)
