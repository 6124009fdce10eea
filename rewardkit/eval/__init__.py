"""Evaluation metrics for pairwise reward models (accuracy, tie band, BT loss, calibration, disentanglement)."""

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
