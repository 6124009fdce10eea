"""Evaluation of reward models and scorers.

- :mod:`rewardkit.eval.metrics`  metrics of pairwise reward models (accuracy, tie band, BT loss, calibration,
  disentanglement), on arrays of score differences and targets;
- :mod:`rewardkit.eval.heldout`  held-out evaluation of exported scorers on items / pairs / preferences
  tables (clean-vs-degraded accuracy per stage and degradation, agreement with annotators);
- :mod:`rewardkit.eval.plots`    the report's figures.
"""

from rewardkit.eval.metrics import (
    DEFAULT_TIE_GRID,
    bt_loss,
    chance_credit_accuracy,
    expected_calibration_error,
    fit_temperature,
    pairwise_accuracy,
    preference_metrics,
    tie_band_accuracy,
    tune_tie_threshold,
)

__all__ = [
    "DEFAULT_TIE_GRID", "bt_loss", "chance_credit_accuracy", "expected_calibration_error", "fit_temperature",
    "pairwise_accuracy", "preference_metrics", "tie_band_accuracy", "tune_tie_threshold",
]
