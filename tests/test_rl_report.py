"""The pipeline's RL reward curve (reports/rl_rewards.csv) carries the held-out evaluation when one ran."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pipelines` is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))


def test_reward_curve_has_heldout_columns_only_when_evaluated():
    from pipelines.rl import curve_columns, curve_rows

    plain = [{"step": 1, "r_high": 0.1, "r_low": 0.2}]
    assert curve_columns(plain) == ["step", "r_high", "r_low", "r_high_group_std", "r_low_group_std"]
    held = plain + [{"step": 2, "r_high": 0.3, "r_low": 0.4, "heldout/r_high": 0.25, "heldout/r_low": 0.35}]
    assert curve_columns(held)[-2:] == ["heldout/r_high", "heldout/r_low"]
    rows = curve_rows(held)
    assert rows[0]["heldout/r_high"] is None and rows[1]["heldout/r_high"] == 0.25
