"""rewardkit.reporting.rl_run (what the rl stages write): the RL reward curve (reports/rl_rewards.csv) carries the held-out evaluation when one ran."""

from __future__ import annotations


def test_reward_curve_has_heldout_columns_only_when_evaluated():
    from rewardkit.reporting.rl_run import curve_columns, curve_rows

    plain = [{"step": 1, "global/reward": 0.1, "local/reward": 0.2}]
    assert curve_columns(plain) == ["step", "global/reward", "local/reward", "global/reward_group_std", "local/reward_group_std"]
    held = plain + [{"step": 2, "global/reward": 0.3, "local/reward": 0.4, "heldout/global/reward": 0.25, "heldout/local/reward": 0.35}]
    assert curve_columns(held)[-2:] == ["heldout/global/reward", "heldout/local/reward"]
    rows = curve_rows(held)
    assert rows[0]["heldout/global/reward"] is None and rows[1]["heldout/global/reward"] == 0.25


def test_penalised_arm_penalises_every_scorer_term_and_compares_per_prompt(tmp_path):
    """Stage rl_penalised: the rl params with uncertainty_penalty on the scorer terms only; its comparison
    puts before / after plain / after penalised side by side per prompt with each arm's guard flags."""
    import pytest

    from rewardkit.config import ConfigError
    from rewardkit.reporting.rl_run import compare_rows, penalised_params, plot_compare

    p = {"rewards_global": [{"name": "iou", "builtin": "occupancy_iou"}, {"name": "g", "scorer": "data/scorers"}],
         "rewards_local": [{"name": "f1", "builtin": "surface_f1"}, {"name": "l", "scorer": "data/scorers"}], "steps": 3}
    out = penalised_params(p, 2.0)
    assert [t.get("uncertainty_penalty") for t in out["rewards_global"] + out["rewards_local"]] == [None, 2.0, None, 2.0]
    assert "uncertainty_penalty" not in p["rewards_global"][1]  # the rl params themselves are untouched
    with pytest.raises(ConfigError, match="no reward term has a scorer"):
        penalised_params({"rewards_global": [{"name": "iou", "builtin": "occupancy_iou"}]}, 1.0)
    with pytest.raises(ConfigError, match=">= 0"):
        penalised_params(p, -1.0)

    def ev(iou: float, g: float) -> dict:
        return {"per_prompt": [{"prompt": "a tall cylinder", "global/reward": iou + 0.5 * g, "global/shape_iou": iou,
                                "global/global_scorer": g, "global/global_scorer_uncertainty": 0.3},
                               {"prompt": "a cube", "global/reward": 0.7, "global/shape_iou": 0.6, "global/global_scorer": 0.2}]}

    before, plain, pen = ev(0.5, -1.0), ev(0.14, -0.1), ev(0.45, -0.8)
    rows = compare_rows(before, plain, pen, {"global/global_scorer": {"flagged_prompts": ["a tall cylinder"]}}, {})
    cyl = next(r for r in rows if r["prompt"] == "a tall cylinder")
    assert (cyl["global/shape_iou_before"], cyl["global/shape_iou_plain"], cyl["global/shape_iou_penalised"]) == (0.5, 0.14, 0.45)
    assert cyl["global/global_scorer_plain"] == -0.1 and cyl["global/global_scorer_penalised"] == -0.8
    assert cyl["guard_flagged_plain"] == "global/global_scorer" and cyl["guard_flagged_penalised"] == ""
    assert not any(k.endswith("_uncertainty_before") for k in cyl)
    plot_compare(rows, tmp_path / "compare.png", 1.0)
    assert (tmp_path / "compare.png").stat().st_size > 5000
