#!/usr/bin/env bash
# Set up, then run the test suite on one thread. Extra arguments go to pytest (e.g. -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${CLLM_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=1
exec pytest "$@"
