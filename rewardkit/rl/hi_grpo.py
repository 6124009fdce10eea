"""Hi-GRPO mathematics: rewards -> advantages -> token-level clipped loss with a k3 KL term.

Pure tensor functions with no model, tokenizer or I/O, so each can be checked against hand-computed
values (tests/test_hi_grpo_math.py). The equations are AR3D-R1's (arXiv:2512.10949, Eq. 9-14; see
docs/hi-grpo.md; R_high is the reward of the global step, step 1, and R_low that of the local step, step 2):

    R~_high = R_high + lambda * R_low
    A(1)_i  = (R~_high_i - mean_g) / (std_g + eps)      population std within the prompt group
    A(2)_i  = (R_low_i  - mean_g) / (std_g + eps)
    L(k)    = -1/(sum_i T_i) sum_i sum_t m_it [ min(r A, clip(r, 1-eps_low, 1+eps_high) A) - beta KL_it ]
    KL_it   = pi_ref/pi - log(pi_ref/pi) - 1            (k3 estimator)
    L       = L(1) + L(2)

Samples whose reward could not be computed carry NaN rewards; they are excluded from their group's
statistics, get advantage 0, and the caller masks their tokens out (``valid`` below).

AR3D-R1's algorithm ablation (Table 2) is a set of switches of :func:`clipped_token_loss` (the defaults are the
paper's best recipe): ``eps_low``/``eps_high`` (decoupled clip; equal values: the symmetric clip),
``aggregation`` (``"token"``: the sum over all tokens / all tokens, DAPO; ``"sequence"``: the mean over
sequences of each sequence's token mean, vanilla GRPO), ``beta`` (0: no KL term and no reference log-probs)
and ``ratio_level`` (``"token"``: r_it; ``"sequence"``: GSPO's s_i = exp(mean_t log r_it), one ratio and one
clip per sequence). Dynamic sampling is :func:`group_has_signal`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "combine_step_rewards",
    "group_advantages",
    "group_has_signal",
    "k3_kl",
    "clipped_token_loss",
    "StepLossOutput",
    "LOSS_AGGREGATIONS",
    "RATIO_LEVELS",
]

LOSS_AGGREGATIONS = ("token", "sequence")
RATIO_LEVELS = ("token", "sequence")


def combine_step_rewards(r_global: torch.Tensor, r_local: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """The global step's reward with cross-step supervision: ``r_global + lam * r_local`` (paper Eq. 9,
    ``R~_high = R_high + lam * R_low``; the paper's R_high is the global step's reward, R_low the local step's)."""
    return r_global + lam * r_local


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (num_groups * group_size), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalized advantages ``(R - mean_g) / (std_g + eps)`` with the *population* std.

    ``rewards`` is laid out group by group (``[g0s0, g0s1, ..., g1s0, ...]``). NaN rewards mark failed
    samples: they are left out of the group mean/std and get advantage 0. A group with no valid sample
    gets all zeros.
    """
    r = _grouped(rewards.to(torch.float64), group_size)
    valid = ~torch.isnan(r)
    n = valid.sum(dim=1, keepdim=True).clamp(min=1)
    r0 = torch.where(valid, r, torch.zeros_like(r))
    mean = r0.sum(dim=1, keepdim=True) / n
    var = (torch.where(valid, r - mean, torch.zeros_like(r)) ** 2).sum(dim=1, keepdim=True) / n
    adv = (r - mean) / (var.sqrt() + eps)
    # all-equal groups get exactly 0 (the float mean of equal values can be off by an ulp)
    flat = ~group_has_signal(rewards, group_size)[:, None]
    adv = torch.where(valid & ~flat, adv, torch.zeros_like(adv))
    return adv.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def group_has_signal(rewards: torch.Tensor, group_size: int, min_std: float = 0.0) -> torch.Tensor:
    """Per group: True when >= 2 rewards are valid and they are not all equal, and (with ``min_std`` > 0)
    their population std exceeds ``min_std``.

    DAPO's dynamic-sampling rule drops groups for which this is False: their advantages are all zero
    (or, with continuous rewards, normalized noise), so they contribute no policy gradient and only dilute
    the token-level average. With continuous rewards, exact equality never happens: use ``min_std``.
    """
    r = _grouped(rewards.to(torch.float64), group_size)
    valid = ~torch.isnan(r)
    n = valid.sum(dim=1)
    big, small = torch.finfo(torch.float64).max, torch.finfo(torch.float64).min
    hi = torch.where(valid, r, torch.full_like(r, small)).max(dim=1).values
    lo = torch.where(valid, r, torch.full_like(r, big)).min(dim=1).values
    signal = (n >= 2) & (hi > lo)
    if min_std > 0:
        k = n.clamp(min=1).to(r.dtype)
        mean = torch.where(valid, r, torch.zeros_like(r)).sum(dim=1) / k
        var = torch.where(valid, (r - mean[:, None]) ** 2, torch.zeros_like(r)).sum(dim=1) / k
        signal = signal & (var.sqrt() > min_std)
    return signal


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): ``exp(d) - d - 1`` with ``d = ref_logp - logp``.

    Non-negative, unbiased for the KL under samples from pi, zero where the two policies agree.
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@dataclass
class StepLossOutput:
    """Loss of one Hi-GRPO step plus diagnostics (all scalars, detached except ``loss``)."""

    loss: torch.Tensor
    num_tokens: torch.Tensor
    policy_term: torch.Tensor
    kl: torch.Tensor
    clip_low_frac: torch.Tensor
    clip_high_frac: torch.Tensor
    ratio_mean: torch.Tensor


def clipped_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    beta: float = 0.01,
    num_tokens: torch.Tensor | float | None = None,
    aggregation: str = "token",
    ratio_level: str = "token",
    num_sequences: torch.Tensor | float | None = None,
) -> StepLossOutput:
    """Token-level (DAPO) aggregated, decoupled-clip policy loss of one step, paper Eq. 11-13, with the
    ablation switches of AR3D-R1 Table 2 (module docstring).

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens under the current policy (with grad).
        old_logp: ``[B, T]`` log-probs under the policy that sampled them; ``None`` means "this is the
            first update on fresh samples" and uses ``logp.detach()`` (ratio exactly 1, as with mu=1).
        ref_logp: ``[B, T]`` log-probs under the frozen reference, or ``None`` when ``beta == 0``.
        advantages: ``[B]`` per-sample advantages of this step.
        mask: ``[B, T]`` 1 for tokens the policy sampled (reasoning and mesh tokens), 0 for forced
            tokens, tokens after EOS and padding.
        num_tokens: the normalizer ``sum_i T_i`` of ``aggregation="token"``. Defaults to ``mask.sum()``; pass
            the total over all micro-batches (and devices) so that micro-batch losses add up to the full-batch loss.
        aggregation: ``"token"``: ``-(1/sum_i T_i) sum_i sum_t m_it x_it``; ``"sequence"``:
            ``-(1/N_seq) sum_i (1/T_i) sum_t m_it x_it`` (each sequence weighs the same, whatever its length).
        ratio_level: ``"token"``: ``r_it = exp(logp_it - old_it)``; ``"sequence"``: GSPO's
            ``s_i = exp((1/T_i) sum_t m_it (logp_it - old_it))`` in place of every ``r_it`` of sequence i, so the
            clip keeps or cuts whole sequences.
        num_sequences: ``N_seq`` of ``aggregation="sequence"``: the sequences with at least one valid token.
            Defaults to this batch's; pass the total over all micro-batches (and devices), as for ``num_tokens``.

    Returns the loss ``-(1/N) sum m [min(rA, clip(r)A) - beta KL]`` and diagnostics.
    """
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {LOSS_AGGREGATIONS}, got {aggregation!r}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    mask = mask.to(logp.dtype)
    valid = mask > 0
    if old_logp is None:
        old_logp = logp.detach()
    if num_tokens is None:
        num_tokens = mask.sum()
    num_tokens = torch.as_tensor(num_tokens, dtype=logp.dtype, device=logp.device).clamp(min=1.0)
    seq_tokens = mask.sum(dim=1)  # T_i
    if num_sequences is None:
        num_sequences = (seq_tokens > 0).sum()
    num_sequences = torch.as_tensor(num_sequences, dtype=logp.dtype, device=logp.device).clamp(min=1.0)

    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))
    if ratio_level == "sequence":  # GSPO: the length-normalized sequence likelihood ratio
        log_ratio = (log_ratio.sum(dim=1) / seq_tokens.clamp(min=1.0)).unsqueeze(1).expand_as(logp)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    surrogate = torch.minimum(unclipped, clipped)
    per_token = surrogate
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs reference log-probs")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token - beta * kl
    else:
        kl = torch.zeros_like(logp)
    if aggregation == "token":
        loss = -(per_token * mask).sum() / num_tokens
    else:
        loss = -((per_token * mask).sum(dim=1) / seq_tokens.clamp(min=1.0)).sum() / num_sequences

    with torch.no_grad():
        n_local = mask.sum().clamp(min=1.0)
        # the clip is active (gradient cut) where the clipped branch is the smaller one
        low = ((ratio < 1.0 - eps_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1.0 + eps_high) & (adv > 0)).to(mask.dtype)
        out = StepLossOutput(
            loss=loss,
            num_tokens=mask.sum().detach(),
            policy_term=(surrogate * mask).sum() / n_local,
            kl=(kl * mask).sum() / n_local,
            clip_low_frac=(low * mask).sum() / n_local,
            clip_high_frac=(high * mask).sum() / n_local,
            ratio_mean=(ratio * mask).sum() / n_local,
        )
    return out
