#!/usr/bin/env bash
# Set up, then compile the default model (SmolLM2-135M) for this CPU (--target host: x86-avx512 or
# x86-avx2, from the CPU's flags) with its plan, validate it on this machine — measured prefill and
# decode speed next to llama.cpp's on the same IR — and print the report (report.json + report.html
# in out/SmolLM2-135M-Instruct-<target>/). Extra arguments go to cllm-compile (e.g. --threads 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${CLLM_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec cllm-compile --force --validate "$@"
