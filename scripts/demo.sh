#!/usr/bin/env bash
# Install rewardkit and run the whole pipeline (`dvc repro`) on the demo it generates itself, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
setup_start=$(date +%s)
bash scripts/setup.sh
echo "[demo] scripts/setup.sh finished in $(( $(date +%s) - setup_start )) s"
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
.venv/bin/python -m dvc repro "$@"  # the dvc of .venv, whatever else is on PATH
echo "dvc repro finished in $(( $(date +%s) - start )) s"
.venv/bin/python -m pipelines.summary
