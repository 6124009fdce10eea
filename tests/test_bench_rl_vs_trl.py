"""benchmarks/bench_rl_vs_trl.py runs end to end (not timed): both trainers, each in its own subprocess, on
TRL's real GRPOTrainer code path (generation, the Python reward function, loss, optimizer step)."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_bench_rl_vs_trl_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_rl_vs_trl.py"), "--tiny", "--steps", "1", "--warmup", "0",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ms / generated token (generate)" in p.stdout and "peak RSS (MB)" in p.stdout
    res = json.loads(out.read_text())
    rk, trl = res["rewardkit"], res["trl"]
    # --tiny: 1 prompt x G=2 per step, 8 mesh tokens per object, reasoning <= 4 tokens
    n_seq = 2 * 2 * 1  # two Hi-GRPO steps per sample on the rewardkit side, 2 prompts per group on TRL's
    assert rk["generate_calls"] == 4  # reasoning + mesh phase, for step 1 and for step 2
    assert 8 + 1 <= rk["tokens_per_sequence"] <= 4 + 8 + 2  # codes + <mesh-end> (+ reasoning, its stop token)
    assert rk["generated_tokens"] == round(rk["tokens_per_sequence"] * n_seq)
    # TRL generated P*G completions per micro-batch (2 micro-batches) of exactly the rewardkit-measured length
    assert trl["generate_calls"] == 2
    assert trl["tokens_per_sequence"] == max(1, round(rk["tokens_per_sequence"]))
    assert trl["generated_tokens"] == trl["tokens_per_sequence"] * n_seq
    for r in (rk, trl):
        assert r["steps_timed"] == 1 and r["s_per_step"] > 0 and r["s_per_gen_token_generate"] > 0
        assert r["rss_peak_mb"] >= r["rss_setup_mb"] > 100
