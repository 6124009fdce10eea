"""benchmarks/bench_rl_gpu.py runs end to end on CPU (--tiny: 2 gloo processes per case, not timed): the
trainer's DDP and FSDP update paths under bf16-mixed with activation checkpointing, and its JSON rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_bench_rl_gpu_tiny_runs_ddp_and_fsdp(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_rl_gpu.py"), "--tiny", "--checkpointing", "on",
         "--steps", "1", "--warmup", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "s / update" in p.stdout and "peak RSS GB" in p.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["strategy"], r["activation_checkpointing"], r["devices"]) for r in rows] == [
        ("ddp", True, 2), ("fsdp", True, 2)]
    for r in rows:
        assert "error" not in r and r["precision"] == "bf16-mixed"
        assert r["s_per_update"] > 0 and r["peak_rss"] > 100e6
    ddp, fsdp = rows
    # the FSDP count sums the ranks' shards: it must give the same model as DDP's full replica
    assert ddp["params"] == fsdp["params"] > 50_000
    # both phases of 1 prompt x G=4 per rank, 2 ranks: completions of 8 reasoning tokens + <mesh-start> + 64 codes +
    # <mesh-end> (bench_rl_memory's synthetic rollouts: every sequence of a phase has the plan's length)
    assert ddp["trained_tokens"] == fsdp["trained_tokens"] == 2 * 2 * 4 * (8 + 1 + 64 + 1)
