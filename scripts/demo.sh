#!/usr/bin/env bash
# Install rewardkit and run the whole pipeline (`dvc repro`) on the demo it generates itself, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
dvc repro "$@"
echo "dvc repro finished in $(( $(date +%s) - start )) s"
.venv/bin/python -m pipelines.summary
