"""Validation metrics for pairwise reward models.

All functions take the reward difference ``delta = r_a − r_b`` per row and the soft target
``t = P(a preferred)`` (1 for ``a``, 0 for ``b``, 0.5 for ``tie``; NaN rows, i.e. ``both_bad``, are
ignored), as numpy arrays or anything ``np.asarray`` accepts.

- ``pairwise_accuracy``: on non-tie rows, the fraction where sign(Δ) agrees with the label. Δ = 0 counts
  as wrong (ImageReward / MPS convention).
- ``tie_band_accuracy``: PickScore's rule. Predict a tie when |P(a) − P(b)| ≤ τ, with P(a) = σ(Δ/T);
  credit 1 for an exact match, 0.5 when exactly one of label and prediction is a tie, else 0. ``τ`` is
  tuned on validation over {0, 0.1, …, 1} (``tune_tie_threshold``).
- ``bt_loss``: the Bradley–Terry loss of ``rewardkit.models.losses`` (weighted mean).
- ``expected_calibration_error``: ECE of σ(Δ/T) on non-tie rows, equal-width confidence bins over
  [0.5, 1]; ``fit_temperature`` fits T by minimising the BT negative log-likelihood (temperature scaling).
- ``chance_credit_accuracy``: for the disentanglement check. Like pairwise accuracy, but a model that
  cannot tell the two apart (|Δ| ≤ eps) gets half credit, so "blind" sits at exactly 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rewardkit.models.losses import bradley_terry_loss

DEFAULT_TIE_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def _arrays(delta, target, weight=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.asarray(delta, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    w = np.ones_like(d) if weight is None else np.asarray(weight, dtype=np.float64).reshape(-1)
    if not (d.shape == t.shape == w.shape):
        raise ValueError(f"shape mismatch: delta {d.shape}, target {t.shape}, weight {w.shape}")
    keep = np.isfinite(t) & np.isfinite(d)
    return d[keep], t[keep], w[keep]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _decided(t: np.ndarray) -> np.ndarray:
    return np.abs(t - 0.5) > 1e-6


def pairwise_accuracy(delta, target) -> float:
    d, t, _ = _arrays(delta, target)
    m = _decided(t)
    if not m.any():
        return float("nan")
    return float(np.mean(np.where(t[m] > 0.5, d[m] > 0, d[m] < 0)))


def chance_credit_accuracy(delta, target, eps: float = 1e-6) -> float:
    d, t, _ = _arrays(delta, target)
    m = _decided(t)
    if not m.any():
        return float("nan")
    d, t = d[m], t[m]
    right = np.where(t > 0.5, d > eps, d < -eps)
    blind = np.abs(d) <= eps
    return float(np.mean(np.where(blind, 0.5, right.astype(np.float64))))


def tie_band_accuracy(delta, target, threshold: float, temperature: float = 1.0) -> float:
    d, t, _ = _arrays(delta, target)
    if d.size == 0:
        return float("nan")
    p_a = _sigmoid(d / temperature)
    pred_tie = np.abs(2 * p_a - 1) <= threshold + 1e-12
    pred_a = ~pred_tie & (p_a > 0.5)
    label_tie = ~_decided(t)
    label_a = ~label_tie & (t > 0.5)
    exact = (pred_tie & label_tie) | (~pred_tie & ~label_tie & (pred_a == label_a))
    half = pred_tie ^ label_tie
    return float(np.mean(np.where(exact, 1.0, np.where(half, 0.5, 0.0))))


def tune_tie_threshold(delta, target, grid: Sequence[float] = DEFAULT_TIE_GRID, temperature: float = 1.0) -> tuple[float, float]:
    """(best τ, its tie-band accuracy); the smallest τ wins a draw."""
    best = (float(grid[0]), -1.0)
    for tau in grid:
        acc = tie_band_accuracy(delta, target, tau, temperature)
        if acc > best[1] + 1e-12:
            best = (float(tau), acc)
    return best


def bt_loss(delta, target, weight=None, margin: float = 0.0, tie_offset: bool = True, temperature: float = 1.0) -> float:
    d, t, w = _arrays(delta, target, weight)
    if d.size == 0:
        return float("nan")
    dd = torch.as_tensor(d / temperature)
    return float(bradley_terry_loss(dd, torch.zeros_like(dd), torch.as_tensor(t), torch.as_tensor(w),
                                    margin=margin, tie_offset=tie_offset))


def expected_calibration_error(delta, target, n_bins: int = 10, temperature: float = 1.0) -> float:
    d, t, _ = _arrays(delta, target)
    m = _decided(t)
    if not m.any():
        return float("nan")
    p_a = _sigmoid(d[m] / temperature)
    conf = np.maximum(p_a, 1 - p_a)
    correct = ((p_a > 0.5) == (t[m] > 0.5)).astype(np.float64)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(ece)


def fit_temperature(delta, target, bounds: tuple[float, float] = (1e-2, 1e3)) -> float:
    """Temperature T > 0 minimising the BT NLL of σ(Δ/T) (ties as 0.5 soft labels)."""
    from scipy.optimize import minimize_scalar

    d, t, _ = _arrays(delta, target)
    if d.size == 0 or not np.any(np.abs(d) > 0):
        return 1.0

    def nll(log_t: float) -> float:
        z = d / math.exp(log_t)
        return float(np.mean(t * np.logaddexp(0, -z) + (1 - t) * np.logaddexp(0, z)))

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def preference_metrics(delta, target, weight=None, *, tie_threshold: float | None = None,
                       temperature: float | None = None, n_bins: int = 10, margin: float = 0.0) -> dict[str, Any]:
    """All metrics of one split. With ``tie_threshold`` / ``temperature`` None they are fitted on this split
    (do that on validation, then pass them in for a test split)."""
    d, t, w = _arrays(delta, target, weight)
    n_ties = int((~_decided(t)).sum())
    tuned_here = tie_threshold is None
    if tie_threshold is None:
        tie_threshold, _ = tune_tie_threshold(d, t)
    if temperature is None:
        temperature = fit_temperature(d, t)
    return {
        "n_pairs": int(d.size),
        "n_decided": int(d.size - n_ties),
        "n_ties": n_ties,
        "pairwise_accuracy": pairwise_accuracy(d, t),
        "tie_band_accuracy": tie_band_accuracy(d, t, tie_threshold),
        "tie_threshold": float(tie_threshold),
        "tie_threshold_fitted_here": tuned_here,
        "bt_loss": bt_loss(d, t, w, margin=margin),
        "ece": expected_calibration_error(d, t, n_bins),
        "temperature": float(temperature),
        "ece_calibrated": expected_calibration_error(d, t, n_bins, temperature=temperature),
        "bt_loss_calibrated": bt_loss(d, t, w, margin=margin, temperature=temperature),
        "mean_abs_delta": float(np.mean(np.abs(d))) if d.size else float("nan"),
    }


__all__ = [
    "DEFAULT_TIE_GRID", "bt_loss", "chance_credit_accuracy", "expected_calibration_error", "fit_temperature",
    "pairwise_accuracy", "preference_metrics", "tie_band_accuracy", "tune_tie_threshold",
]
