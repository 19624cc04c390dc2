#!/usr/bin/env bash
# Set up, then compile the default model (SmolLM2-135M) for the default target (x86-avx512)
# with its plan, validate it on this machine and print the report (report.json + report.html in
# out/SmolLM2-135M-Instruct-x86-avx512/). Extra arguments go to cllm-compile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${CLLM_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec cllm-compile --force --validate "$@"
