"""Bradley–Terry loss and the evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rewardkit.eval import metrics as M
from rewardkit.models.losses import (
    BradleyTerryLoss,
    bradley_terry_loss,
    prompt_weights,
    target_from_label,
    targets_from_labels,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def bt(delta, target, weight=None, **kw):
    d = torch.tensor(delta, dtype=torch.float32)
    return bradley_terry_loss(d, torch.zeros_like(d), torch.tensor(target, dtype=torch.float32),
                              None if weight is None else torch.tensor(weight, dtype=torch.float32), **kw)


# ------------------------------------------------------------------------------------------------- #
# loss
def test_win_loss_tie_values():
    # win: -log σ(1) = log(1 + e^-1)
    assert bt([1.0], [1.0]).item() == pytest.approx(0.31326168751822286, abs=1e-6)
    # loss: the preferred item got the lower reward: -log σ(-1) = log(1 + e^1)
    assert bt([1.0], [0.0]).item() == pytest.approx(1.3132616875182228, abs=1e-6)
    # tie at Δ = 0: soft label 0.5/0.5 with the log 0.5 offset -> ideal loss 0
    assert bt([0.0], [0.5]).item() == pytest.approx(0.0, abs=1e-7)
    # tie at Δ = 2: 0.5·log(1+e^-2) + 0.5·log(1+e^2) − log 2
    expected = 0.5 * softplus(-2) + 0.5 * softplus(2) - math.log(2)
    assert bt([2.0], [0.5]).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.4337808, abs=1e-6)
    # without the offset a tie at Δ = 0 costs log 2
    assert bt([0.0], [0.5], tie_offset=False).item() == pytest.approx(math.log(2), abs=1e-6)


def test_tie_is_symmetric_and_minimised_at_zero():
    assert bt([1.5], [0.5]).item() == pytest.approx(bt([-1.5], [0.5]).item(), abs=1e-7)
    assert bt([0.3], [0.5]).item() > bt([0.0], [0.5]).item()


def test_margin():
    # decided pairs: −log σ(Δ − m) for a win, −log σ(−Δ − m) for a loss
    assert bt([1.0], [1.0], margin=0.5).item() == pytest.approx(softplus(-0.5), abs=1e-6)
    assert bt([1.0], [0.0], margin=0.5).item() == pytest.approx(softplus(1.5), abs=1e-6)
    # ties are not pushed apart by a margin
    assert bt([0.7], [0.5], margin=0.5).item() == pytest.approx(bt([0.7], [0.5]).item(), abs=1e-7)


def test_weights_are_a_weighted_mean():
    # a win (w 0.5), a loss (w 0.5) and a tie at 0 (w 1): (0.5·0.31326 + 0.5·1.31326 + 0) / 2
    got = bt([1.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.5, 0.5, 1.0]).item()
    assert got == pytest.approx((0.5 * 0.31326168751822286 + 0.5 * 1.3132616875182228) / 2.0, abs=1e-6)
    assert got == pytest.approx(0.40663084, abs=1e-6)
    # sum reduction = Σ w·loss
    assert bt([1.0, 1.0], [1.0, 0.0], [0.5, 2.0], reduction="sum").item() == pytest.approx(
        0.5 * 0.31326168751822286 + 2.0 * 1.3132616875182228, abs=1e-5)


def test_both_bad_rows_are_left_out():
    base = bt([1.0, -2.0], [1.0, 0.0], [1.0, 1.0]).item()
    with_nan = bt([1.0, -2.0, 5.0], [1.0, 0.0, float("nan")], [1.0, 1.0, 1.0]).item()
    assert with_nan == pytest.approx(base, abs=1e-7)
    per_row = bt([1.0, 5.0], [1.0, float("nan")], reduction="none")
    assert math.isnan(per_row[1].item()) and not math.isnan(per_row[0].item())
    # gradients stay finite and the both_bad row gets none
    r_a = torch.tensor([1.0, 5.0], requires_grad=True)
    bradley_terry_loss(r_a, torch.zeros(2), torch.tensor([1.0, float("nan")])).backward()
    assert torch.isfinite(r_a.grad).all() and r_a.grad[1].item() == 0.0
    # a batch of only both_bad rows gives 0, not NaN
    assert bt([1.0], [float("nan")]).item() == 0.0


def test_swapping_sides_and_labels_gives_the_same_loss():
    rng = np.random.default_rng(0)
    d = rng.normal(size=8).astype(np.float32)
    t = rng.choice([0.0, 0.5, 1.0], size=8).astype(np.float32)
    assert bt(d.tolist(), t.tolist(), margin=0.3).item() == pytest.approx(
        bt((-d).tolist(), (1 - t).tolist(), margin=0.3).item(), abs=1e-6)


def test_matches_two_way_cross_entropy_form():
    # PickScore/3DGen-Score write it as CE over [r_a, r_b] with soft targets (plus log 0.5 for ties)
    r = torch.tensor([[2.0, 0.5], [0.1, 1.1], [0.3, 0.3], [1.0, -1.0]])
    t = torch.tensor([1.0, 0.0, 0.5, 0.5])
    soft = torch.stack([t, 1 - t], 1)
    ce = -(soft * r.log_softmax(1)).sum(1)
    ce = ce + torch.where(t == 0.5, torch.tensor(math.log(0.5)), torch.tensor(0.0))
    ours = bradley_terry_loss(r[:, 0], r[:, 1], t, reduction="none")
    assert torch.allclose(ours, ce, atol=1e-6)


def test_module_and_label_helpers():
    crit = BradleyTerryLoss(margin=0.5)
    assert crit(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(softplus(-0.5), abs=1e-6)
    assert target_from_label("a") == 1.0 and target_from_label("b") == 0.0 and target_from_label("tie") == 0.5
    assert math.isnan(target_from_label("both_bad"))
    with pytest.raises(ValueError, match="unknown preference label"):
        target_from_label("maybe")
    assert targets_from_labels(["a", "tie"]).tolist() == [1.0, 0.5]
    assert prompt_weights(["p1", "p1", "p2", "p1"]).tolist() == pytest.approx([1 / 3, 1 / 3, 1.0, 1 / 3])
    with pytest.raises(ValueError, match="shape mismatch"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2))


# ------------------------------------------------------------------------------------------------- #
# metrics
def test_pairwise_accuracy_ignores_ties_and_counts_zero_as_wrong():
    # rows: right, wrong, wrong (Δ>0 but b preferred), Δ=0 (wrong), a tie (ignored), both_bad (ignored)
    d = [1.0, -1.0, 2.0, 0.0, 3.0, 1.0]
    t = [1.0, 1.0, 0.0, 1.0, 0.5, float("nan")]
    assert M.pairwise_accuracy(d, t) == pytest.approx(0.25)
    assert math.isnan(M.pairwise_accuracy([1.0], [0.5]))


def test_tie_band_accuracy_pickscore_credit():
    d = [0.0, 3.0, -3.0, 0.1]
    t = [0.5, 1.0, 1.0, 0.5]
    # τ = 0.1: |2σ(0.1) − 1| = 0.05 -> a tie; credits 1, 1, 0, 1
    assert M.tie_band_accuracy(d, t, 0.1) == pytest.approx(0.75)
    # τ = 0: only Δ = 0 is a tie; row 4 predicts a for a tie label -> half credit
    assert M.tie_band_accuracy(d, t, 0.0) == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    # τ = 1: everything is a tie; decided labels get half credit
    assert M.tie_band_accuracy(d, t, 1.0) == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    # tuning picks the smallest best τ
    assert M.tune_tie_threshold(d, t) == (pytest.approx(0.1), pytest.approx(0.75))


def test_ece_and_temperature():
    # confidence 0.75 everywhere, 3 of 4 right -> perfectly calibrated
    d = [math.log(3)] * 4
    assert M.expected_calibration_error(d, [1, 1, 1, 0]) == pytest.approx(0.0, abs=1e-9)
    # all right at confidence 0.75 -> ECE 0.25
    assert M.expected_calibration_error(d, [1, 1, 1, 1]) == pytest.approx(0.25, abs=1e-9)
    # scores 3x too confident with soft targets σ(Δ_true): the fitted temperature is 3
    rng = np.random.default_rng(0)
    true = rng.normal(0, 2, size=400)
    target = 1 / (1 + np.exp(-true))
    assert M.fit_temperature(3 * true, target) == pytest.approx(3.0, rel=1e-3)
    # on sampled labels temperature scaling lowers the ECE of an over-confident model
    labels = (rng.random(400) < target).astype(float)
    T = M.fit_temperature(3 * true, labels)
    assert T > 1.5
    assert M.expected_calibration_error(3 * true, labels, temperature=T) < M.expected_calibration_error(3 * true, labels)


def test_bt_loss_metric_and_chance_credit():
    assert M.bt_loss([1.0, 0.0], [1.0, 0.5]) == pytest.approx(0.31326168751822286 / 2, abs=1e-6)
    # a model blind to the difference (Δ = 0) sits exactly at chance
    assert M.chance_credit_accuracy([0.0, 0.0, 0.0], [1.0, 0.0, 1.0]) == 0.5
    assert M.chance_credit_accuracy([1.0, 1.0], [1.0, 0.0]) == 0.5
    assert M.chance_credit_accuracy([1.0, -1.0], [1.0, 0.0]) == 1.0


def test_preference_metrics_bundle():
    rng = np.random.default_rng(1)
    d = rng.normal(size=50)
    t = np.where(d + rng.normal(0, 0.5, size=50) > 0, 1.0, 0.0)
    t[:5] = 0.5
    m = M.preference_metrics(d, t)
    assert m["n_pairs"] == 50 and m["n_ties"] == 5 and m["n_decided"] == 45
    for key in ("pairwise_accuracy", "tie_band_accuracy", "bt_loss", "ece", "ece_calibrated", "temperature"):
        assert np.isfinite(m[key]), key
    assert m["tie_threshold_fitted_here"] is True
    fixed = M.preference_metrics(d, t, tie_threshold=0.2, temperature=2.0)
    assert fixed["tie_threshold"] == 0.2 and fixed["temperature"] == 2.0 and fixed["tie_threshold_fitted_here"] is False
