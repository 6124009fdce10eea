"""benchmarks/bench_serve_replicas.py runs to its last figure (--smoke: 6 tiny meshes, rk-tiny at 64 px; not
timed): the local engine, then 1 and 2 Ray Serve replicas, each engine's scores equal to the local one's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_serve_replicas_smoke(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve_replicas.py"), "--smoke", "--json",
                        str(out)], capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["engine"], r["replicas"]) for r in rows] == [("local (uvicorn)", 1), ("ray serve", 1), ("ray serve", 2)]
    assert all(r["meshes_per_s"] > 0 and r["max_abs_diff"] <= 1e-5 for r in rows)
    assert "meshes/s" in p.stdout.splitlines()[-4]  # the side-by-side table is the last thing printed
