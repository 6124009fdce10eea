#!/usr/bin/env bash
# Install rewardkit (core only, no extras) from this checkout into an EMPTY virtual environment and check
# that scoring works there: `rewardkit score --help`, then a real score of a mesh with a freshly exported
# tiny scorer, with DVC, Lightning, Celery and the Label Studio SDK absent. Prints the package count and
# the environment's size. With --all, then installs `.[all]` into the same environment and checks that
# the extras are back.
#
#   scripts/check_lean_install.sh [--all] [--keep]      (minutes: torch is large; pip's cache helps)
#
# By hand, not in CI (it downloads/copies a full torch). The venv lives in a temp folder, removed at the
# end unless --keep.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
want_all=0; keep=0
for arg in "$@"; do
  case "$arg" in
    --all) want_all=1 ;;
    --keep) keep=1 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d -t rk-lean-XXXXXX)
[ "$keep" = 1 ] || trap 'rm -rf "$WORK"' EXIT
echo "[lean] empty venv in $WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
PY=$WORK/venv/bin/python
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
t0=$(date +%s)
echo "[lean] pip install $ROOT (core, no extras)"
"$PY" -m pip install -q "$ROOT" 2>&1 | grep -v -e "^WARNING: Location 'file://" -e "is neither a file nor a directory" || true
"$PY" -c "import rewardkit" || { echo "[lean] FAILED: rewardkit not installed" >&2; exit 1; }
echo "[lean] install took $(( $(date +%s) - t0 )) s"

report() {  # package count and size of the environment
  local n size
  n=$("$PY" -m pip list --format=freeze 2>/dev/null | grep -vc -e '^pip==' -e '^setuptools==' -e '^wheel==')
  size=$(du -sh "$WORK/venv" | cut -f1)
  echo "[lean] $1: $n packages (pip itself not counted), $size on disk"
  echo "[lean]   largest: $(du -s "$WORK"/venv/lib/python3*/site-packages/* 2>/dev/null | sort -rn | head -6 \
    | awk '{n=split($2, a, "/"); printf "%s %.1fG  ", a[n], $1/1048576}')"
}
report "core"

cd "$WORK"  # away from the checkout: the installed package, not the source tree, is imported
absent=()
for m in dvc lightning label_studio_sdk celery; do
  if "$PY" -c "import $m" >/dev/null 2>&1; then echo "[lean] FAILED: $m is installed by the core" >&2; exit 1; fi
  absent+=("$m")
done
echo "[lean] absent from the core: ${absent[*]}"
"$WORK/venv/bin/rewardkit" score --help >/dev/null
echo "[lean] rewardkit score --help: ok"

# a real score: a tiny random-init scorer set exported with the installed package, a box mesh
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path

import torch
import trimesh

from rewardkit.models import BackboneConfig, StageModelConfig, StageRewardModel
from rewardkit.scoring import Scorer, ScorerSet

work = Path(sys.argv[1])
torch.manual_seed(0)
scorers = {k: Scorer(StageRewardModel(StageModelConfig(stage=k, backbone=BackboneConfig("rk-tiny"))).eval(),
                     camera="orbit4", render_size=64) for k in ("global", "local")}
ScorerSet(global_scorer=scorers["global"], local_scorer=scorers["local"]).save_pretrained(work / "scorers")
trimesh.creation.box(extents=(0.8, 0.5, 0.4)).export(work / "box.obj")
EOF
PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl} "$WORK/venv/bin/rewardkit" score "$WORK/box.obj" -p "a box" \
  --scorer "$WORK/scorers" --device cpu --no-progress
echo "[lean] rewardkit score (core only): ok"
for cmd in train "annotate status" "serve --scorer x"; do
  set +e; msg=$("$WORK/venv/bin/rewardkit" $cmd 2>&1 >/dev/null); rc=$?; set -e
  echo "[lean] rewardkit $cmd -> exit $rc: $msg"
done

if [ "$want_all" = 1 ]; then
  t0=$(date +%s)
  echo "[lean] pip install $ROOT[all]"
  "$PY" -m pip install -q "$ROOT[all]" 2>&1 | grep -v -e "^WARNING: Location 'file://" -e "is neither a file nor a directory" || true
  echo "[lean] install took $(( $(date +%s) - t0 )) s"
  for m in dvc lightning label_studio_sdk celery fastapi; do
    "$PY" -c "import $m" || { echo "[lean] FAILED: [all] did not install $m" >&2; exit 1; }
  done
  echo "[lean] [all] restored: dvc lightning label_studio_sdk celery fastapi"
  report "core + [all]"
fi
echo "[lean] done"
