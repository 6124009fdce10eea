"""benchmarks/bench_ray.py runs end to end in its smoke mode (not timed): local and Ray engines, render and score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_bench_ray_smoke(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ray.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ray.init:" in p.stdout and "render ray x2" in p.stdout and "score local" in p.stdout
    res = json.loads(out.read_text())
    for run in ("render_local", "score_local", "render_ray2", "score_ray2"):
        assert res[run]["full"]["items"] == 6 and res[run]["small"]["items"] == 2, (run, res[run])
        assert res[run]["full"]["failed"] == res[run]["small"]["failed"] == 0, (run, res[run])
