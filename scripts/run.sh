#!/usr/bin/env bash
# Set up, then compile the default model (SmolLM2-135M) for the default target (x86-avx512)
# and print the validation report. Extra arguments go to cllm-compile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${CLLM_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec cllm-compile --force "$@"
