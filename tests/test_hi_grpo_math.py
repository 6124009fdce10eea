"""Hi-GRPO math against hand-computed small cases (paper Eq. 9-14; docs/hi-grpo.md)."""

from __future__ import annotations

import math

import pytest
import torch

from rewardkit.rl.hi_grpo import (
    clipped_token_loss,
    combine_step_rewards,
    group_advantages,
    group_has_signal,
    k3_kl,
)

EPS = 1e-4


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# -- advantages ---------------------------------------------------------------------------------------

def test_group_advantages_population_std_by_hand():
    # group [1, 2, 3, 4]: mean 2.5, population var (2.25+.25+.25+2.25)/4 = 1.25
    adv = group_advantages(t([1.0, 2.0, 3.0, 4.0]), group_size=4, eps=EPS)
    std = math.sqrt(1.25)
    expected = [(-1.5) / (std + EPS), (-0.5) / (std + EPS), 0.5 / (std + EPS), 1.5 / (std + EPS)]
    assert adv.tolist() == pytest.approx(expected, abs=1e-12)
    # the unbiased (N-1) std would give 1.2910 instead: make sure that is not what we use
    assert adv[3].item() != pytest.approx(1.5 / (math.sqrt(5 / 3) + EPS), abs=1e-6)


def test_group_advantages_are_per_group():
    adv = group_advantages(t([0.0, 1.0, 10.0, 30.0]), group_size=2, eps=EPS)
    # each group of two: +-0.5 / (0.5 + eps) and +-10 / (10 + eps)
    assert adv.tolist() == pytest.approx([-0.5 / 0.5001, 0.5 / 0.5001, -10 / 10.0001, 10 / 10.0001], abs=1e-12)


def test_zero_variance_group_gets_zero_advantage_and_no_signal():
    r = t([0.7, 0.7, 0.7, 0.1, 0.9, 0.5])
    adv = group_advantages(r, group_size=3)
    assert adv[:3].abs().max().item() == 0.0
    assert group_has_signal(r, 3).tolist() == [False, True]


def test_failed_samples_are_left_out_of_group_statistics():
    # NaN marks a failed reward: stats over the two valid values [1, 3] -> mean 2, std 1
    adv = group_advantages(t([1.0, float("nan"), 3.0]), group_size=3, eps=EPS)
    assert adv.tolist() == pytest.approx([-1 / (1 + EPS), 0.0, 1 / (1 + EPS)], abs=1e-12)
    # a single valid sample carries no signal
    assert group_has_signal(t([1.0, float("nan"), float("nan")]), 3).tolist() == [False]
    # continuous rewards: a tolerance on the group's (population) std
    near = t([1.0, 1.0 + 1e-7, 1.0 - 1e-7, 2.0, 2.1, 1.9])
    assert group_has_signal(near, 3).tolist() == [True, True]
    assert group_has_signal(near, 3, min_std=1e-3).tolist() == [False, True]
    assert group_has_signal(t([0.0, 0.003, float("nan")]), 3, min_std=1e-3).tolist() == [True]  # std 0.0015


def test_lambda_cross_step_term_by_hand():
    r_high, r_low = t([1.0, 0.0]), t([0.0, 2.0])
    # lambda = 1: R~ = [1, 2] -> the sample with the better refined object wins step 1 as well
    a1 = group_advantages(combine_step_rewards(r_high, r_low, 1.0), 2, EPS)
    assert a1.tolist() == pytest.approx([-0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS)], abs=1e-12)
    # lambda = 0: plain R_high -> the opposite ranking
    a1_no = group_advantages(combine_step_rewards(r_high, r_low, 0.0), 2, EPS)
    assert a1_no.tolist() == pytest.approx([0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS)], abs=1e-12)
    # lambda = 0.25: R~ = [1, 0.5]
    assert combine_step_rewards(r_high, r_low, 0.25).tolist() == [1.0, 0.5]


# -- k3 -----------------------------------------------------------------------------------------------

def test_k3_estimator_by_hand():
    logp, ref = t([math.log(0.5), math.log(0.2)]), t([math.log(0.25), math.log(0.2)])
    kl = k3_kl(logp, ref)
    # pi_ref/pi = 0.5: 0.5 - log 0.5 - 1 = 0.193147...; equal policies give 0
    assert kl.tolist() == pytest.approx([0.5 - math.log(0.5) - 1.0, 0.0], abs=1e-12)
    assert (k3_kl(torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)) >= 0).all()


# -- loss ---------------------------------------------------------------------------------------------

def _loss(logp, old, ref, adv, mask, **kw):
    kw.setdefault("eps_low", 0.2)
    kw.setdefault("eps_high", 0.28)
    kw.setdefault("beta", 0.0)
    return clipped_token_loss(logp, old, ref, adv, mask, **kw)


def test_clipping_on_both_sides_values_and_gradients():
    # four one-token samples with ratios 1.5, 0.5, 0.5, 1.5 and advantages +1, -1, +1, -1
    ratios = t([[1.5], [0.5], [0.5], [1.5]])
    old = torch.zeros(4, 1, dtype=torch.float64)
    logp = torch.log(ratios).requires_grad_(True)
    adv = t([1.0, -1.0, 1.0, -1.0])
    out = _loss(logp, old, None, adv, torch.ones(4, 1))
    # min(rA, clip(r)A): 1.5*1 -> clipped to 1.28; 0.5*-1 -> clipped to -0.8; 0.5*1 stays 0.5; 1.5*-1 stays -1.5
    per_token = [1.28, -0.8, 0.5, -1.5]
    assert out.loss.item() == pytest.approx(-sum(per_token) / 4, abs=1e-12)
    assert out.clip_high_frac.item() == pytest.approx(0.25)
    assert out.clip_low_frac.item() == pytest.approx(0.25)
    out.loss.backward()
    # clipped tokens get no gradient; unclipped: d(-rA/4)/dlogp = -rA/4
    assert logp.grad[:, 0].tolist() == pytest.approx([0.0, 0.0, -0.5 / 4, 1.5 / 4], abs=1e-12)


def test_decoupled_clip_uses_separate_bounds():
    logp = torch.log(t([[1.25], [0.85]]))
    out = _loss(logp, torch.zeros(2, 1, dtype=torch.float64), None, t([1.0, -1.0]), torch.ones(2, 1),
                eps_low=0.1, eps_high=0.3)
    # 1.25 < 1 + 0.3 is not clipped; 0.85 < 1 - 0.1 is clipped to 0.9 for a negative advantage
    assert out.loss.item() == pytest.approx(-(1.25 - 0.9) / 2, abs=1e-12)


def test_first_update_has_ratio_one_and_plain_policy_gradient():
    logp = t([[-1.0, -2.0]]).requires_grad_(True)
    out = _loss(logp, None, None, t([2.0]), torch.ones(1, 2))
    assert out.ratio_mean.item() == 1.0 and out.loss.item() == pytest.approx(-2.0)
    out.loss.backward()
    assert logp.grad.tolist() == [[-1.0, -1.0]]  # -A / N per token


def test_kl_term_by_hand():
    logp = t([[math.log(0.5), math.log(0.5)]])
    ref = t([[math.log(0.25), math.log(0.5)]])
    out = _loss(logp, None, ref, t([1.0]), torch.ones(1, 2), beta=0.1)
    kl0 = 0.5 - math.log(0.5) - 1.0
    # -(1/2) * [(1 - 0.1*kl0) + (1 - 0)]
    assert out.loss.item() == pytest.approx(-((1 - 0.1 * kl0) + 1.0) / 2, abs=1e-12)
    assert out.kl.item() == pytest.approx(kl0 / 2, abs=1e-12)
    with pytest.raises(ValueError):
        _loss(logp, None, None, t([1.0]), torch.ones(1, 2), beta=0.1)


def test_token_level_averaging_over_all_tokens_of_all_samples():
    # sample 0 has 1 valid token with A = 3, sample 1 has 3 valid tokens with A = -1
    logp = torch.zeros(2, 3, dtype=torch.float64)
    mask = t([[1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    out = _loss(logp, None, None, t([3.0, -1.0]), mask)
    assert out.loss.item() == pytest.approx(-(3 * 1 + (-1) * 3) / 4, abs=1e-12)  # = 0
    # a per-sequence mean (vanilla GRPO) would be -(3 + -1)/2 = -1: not what Hi-GRPO uses
    assert out.loss.item() != pytest.approx(-1.0)


def test_masked_tokens_do_not_contribute():
    mask = t([[1, 1, 0, 0]], dtype=torch.float32)  # tokens after EOS / padding
    base = t([[-0.5, -1.0, 0.0, 0.0]])
    garbage = t([[-0.5, -1.0, 50.0, -80.0]]).requires_grad_(True)
    ref = t([[-0.7, -1.0, -30.0, 20.0]])
    a = _loss(base, t([[-0.6, -1.1, 0.0, 0.0]]), ref, t([1.5]), mask, beta=0.04)
    b = _loss(garbage, t([[-0.6, -1.1, 9.0, -9.0]]), ref, t([1.5]), mask, beta=0.04)
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-12)
    b.loss.backward()
    assert garbage.grad[0, 2:].abs().max().item() == 0.0


def test_micro_batches_add_up_to_the_full_batch_loss():
    torch.manual_seed(0)
    logp, old, ref = (torch.randn(6, 5, dtype=torch.float64) * 0.3 - 1 for _ in range(3))
    adv = torch.randn(6, dtype=torch.float64)
    mask = (torch.rand(6, 5) > 0.3).float()
    full = _loss(logp, old, ref, adv, mask, beta=0.01).loss
    n = mask.sum()
    parts = sum(_loss(logp[i:i + 2], old[i:i + 2], ref[i:i + 2], adv[i:i + 2], mask[i:i + 2], beta=0.01, num_tokens=n).loss
                for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(full.item(), abs=1e-12)


def test_total_loss_is_sum_of_the_two_steps():
    # L = L1 + L2 with each step normalized by its own token count
    l1 = _loss(torch.zeros(1, 2, dtype=torch.float64), None, None, t([1.0]), torch.ones(1, 2)).loss
    l2 = _loss(torch.zeros(1, 4, dtype=torch.float64), None, None, t([-0.5]), torch.ones(1, 4)).loss
    assert (l1 + l2).item() == pytest.approx(-1.0 + 0.5)


# -- AR3D-R1 Table 2's ablation switches (docs/hi-grpo.md, "Algorithm ablation") ------------------------

def test_table2_decoupled_clip_against_the_symmetric_clip_by_hand():
    # one token, ratio 1.25, A = +1: decoupled (0.2 / 0.28) leaves 1.25 < 1.28 alone; symmetric (0.2 / 0.2)
    # clips it to 1.2 and cuts its gradient
    for eps_high, loss, grad in ((0.28, -1.25, -1.25), (0.2, -1.2, 0.0)):
        logp = torch.log(t([[1.25]])).requires_grad_(True)
        out = _loss(logp, t([[0.0]]), None, t([1.0]), torch.ones(1, 1), eps_low=0.2, eps_high=eps_high)
        out.loss.backward()
        assert out.loss.item() == pytest.approx(loss, abs=1e-12)
        assert logp.grad.item() == pytest.approx(grad, abs=1e-12)  # d(-rA)/dlogp = -rA where unclipped


def test_table2_per_sequence_mean_aggregation_by_hand():
    # ratio 1: per-token term = A. Sample 0: 1 valid token, A = 3; sample 1: 3 tokens, A = -1; sample 2: none
    logp = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    mask = t([[1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.float32)
    adv = t([3.0, -1.0, 5.0])
    token = _loss(logp, None, None, adv, mask)
    seq = _loss(logp, None, None, adv, mask, aggregation="sequence")
    assert token.loss.item() == pytest.approx(-(3 - 1 - 1 - 1) / 4, abs=1e-12)  # = 0
    # vanilla GRPO: -(1/2)(3/1 + (-1-1-1)/3) = -1; the empty sample 2 is not a sequence of the mean
    assert seq.loss.item() == pytest.approx(-1.0, abs=1e-12)
    seq.loss.backward()
    # d/dlogp_it = -A_i / (T_i * N_seq): -3/2 for sample 0's token, +1/6 for each of sample 1's
    assert logp.grad.flatten().tolist() == pytest.approx([-1.5, 0, 0, 1 / 6, 1 / 6, 1 / 6, 0, 0, 0], abs=1e-12)
    # micro-batches with the global sequence count add up to the full-batch loss
    parts = [_loss(logp[i:i + 1].detach(), None, None, adv[i:i + 1], mask[i:i + 1], aggregation="sequence",
                   num_sequences=2).loss.item() for i in range(3)]
    assert sum(parts) == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(ValueError, match="aggregation"):
        _loss(logp, None, None, adv, mask, aggregation="sample")


def test_table2_gspo_sequence_ratio_and_clip_by_hand():
    # sample 0: log-ratios ln 2 and 0, A = +1; sample 1: one token, log-ratio ln 0.9, A = -1
    old = torch.zeros(2, 2, dtype=torch.float64)
    lp = t([[math.log(2.0), 0.0], [math.log(0.9), 0.0]])
    mask = t([[1, 1], [1, 0]], dtype=torch.float32)
    adv = t([1.0, -1.0])
    # token-level ratios: 2 -> clipped to 1.28, 1 -> 1; 0.9 (A < 0, inside [0.8, 1.28]) -> -0.9
    tok = _loss(lp, old, None, adv, mask)
    assert tok.loss.item() == pytest.approx(-(1.28 + 1.0 - 0.9) / 3, abs=1e-12)
    # GSPO: s_0 = exp((ln 2 + 0) / 2) = sqrt 2 = 1.414 -> clipped to 1.28 for both tokens; s_1 = 0.9
    logp = lp.clone().requires_grad_(True)
    seq = _loss(logp, old, None, adv, mask, ratio_level="sequence")
    assert seq.loss.item() == pytest.approx(-(1.28 + 1.28 - 0.9) / 3, abs=1e-12)
    assert seq.ratio_mean.item() == pytest.approx((2 * math.sqrt(2) + 0.9) / 3, abs=1e-12)
    assert seq.clip_high_frac.item() == pytest.approx(2 / 3, abs=1e-12)  # the whole of sample 0 is cut
    seq.loss.backward()
    # sample 0 clipped: no gradient; sample 1: d(-s A / 3)/dlogp = -(0.9)(-1)/3 = 0.3
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.3, 0.0], abs=1e-12)
    # at ratio 1 (the first update) the sequence ratio's gradient is the token ratio's: -A/N per token
    fresh = t([[-1.0, -2.0]]).requires_grad_(True)
    _loss(fresh, None, None, t([2.0]), torch.ones(1, 2), ratio_level="sequence").loss.backward()
    assert fresh.grad.flatten().tolist() == pytest.approx([-1.0, -1.0], abs=1e-12)


def test_table2_kl_removal_by_hand():
    # beta = 0: the loss is the clipped surrogate alone, whatever the reference says (and needs none)
    logp = t([[math.log(0.5), math.log(0.5)]])
    ref = t([[math.log(0.25), math.log(0.5)]])
    assert _loss(logp, None, ref, t([1.0]), torch.ones(1, 2), beta=0.0).loss.item() == pytest.approx(-1.0)
    assert _loss(logp, None, None, t([1.0]), torch.ones(1, 2), beta=0.0).kl.item() == 0.0
    # beta = 0.01 keeps it: -(1/2)[(1 - 0.01 * (0.5 - ln 0.5 - 1)) + 1]
    kept = _loss(logp, None, ref, t([1.0]), torch.ones(1, 2), beta=0.01).loss.item()
    assert kept == pytest.approx(-((1 - 0.01 * (0.5 - math.log(0.5) - 1)) + 1) / 2, abs=1e-12)


def test_table2_dynamic_sampling_rule_by_hand():
    # groups of 4: [0, 1, 0, 1] (population std 0.5) carries signal, [2, 2, 2, 2] none (all advantages 0)
    r = t([0.0, 1.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    assert group_has_signal(r, 4).tolist() == [True, False]
    assert group_has_signal(r, 4, min_std=0.49).tolist() == [True, False]
    assert group_has_signal(r, 4, min_std=0.5).tolist() == [False, False]  # std must exceed the tolerance
    assert group_advantages(r, 4, EPS)[4:].tolist() == [0.0] * 4
