#!/usr/bin/env bash
# Install everything the test suite needs (system GL, .venv, the Label Studio server, chromium) and run it.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/test_render.py -x`; while working,
# `scripts/test.sh -m "not slow"` leaves out the tests marked slow (each over ~10 s; CI runs everything).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q "$@"
