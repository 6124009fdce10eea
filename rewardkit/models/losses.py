"""Preference losses, kept apart from the model (PickScore's criterion convention).

Bradley–Terry on reward differences Δ = r_a − r_b with a soft target t = P(a preferred):

    z    = Δ − m·(2t − 1)                          (margin m applies only to decided pairs)
    loss = −[t·log σ(z) + (1 − t)·log σ(−z)] − H(t)

``t`` is 1 for label ``a``, 0 for ``b`` and 0.5 for ``tie`` (PickScore's 0.5/0.5 soft label). ``H(t)`` is
the target's entropy (log 2 for a tie, 0 otherwise); subtracting it (``tie_offset=True``, PickScore adds
log 0.5) makes the ideal loss 0 for ties too. Rows labelled ``both_bad`` carry no ordering: they stay in the
data (``target_from_label`` returns NaN) and are left out of the loss. Each row may carry a weight, by
default 1/(number of rows of its prompt) so prompts with many comparisons do not dominate; the batch loss
is Σ w·loss / Σ w over the rows kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LABEL_TARGETS: dict[str, float] = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": float("nan")}


def target_from_label(label: str) -> float:
    """P(a preferred) for a preference label; NaN for ``both_bad`` (no ordering)."""
    try:
        return LABEL_TARGETS[label]
    except KeyError:
        raise ValueError(f"unknown preference label {label!r}; expected one of {list(LABEL_TARGETS)}") from None


def targets_from_labels(labels: Iterable[str]) -> torch.Tensor:
    return torch.tensor([target_from_label(x) for x in labels], dtype=torch.float32)


def prompt_weights(prompt_ids: Sequence[str]) -> torch.Tensor:
    """1/(rows of that prompt) for each row (PickScore's 1/num_examples_per_prompt)."""
    counts: dict[str, int] = {}
    for p in prompt_ids:
        counts[p] = counts.get(p, 0) + 1
    return torch.tensor([1.0 / counts[p] for p in prompt_ids], dtype=torch.float32)


def _binary_entropy(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return -(torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t))


def bradley_terry_loss(
    reward_a: torch.Tensor,
    reward_b: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    margin: float = 0.0,
    tie_offset: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Bradley–Terry loss with soft targets, weights and margin (see the module docstring).

    ``target`` holds P(a preferred) per row (NaN rows are ignored). ``reduction``: ``"mean"`` (weighted
    mean over kept rows; 0 if none), ``"sum"`` (Σ w·loss) or ``"none"`` (per row, NaN where ignored).
    """
    reward_a, reward_b = reward_a.float().reshape(-1), reward_b.float().reshape(-1)
    target = target.to(reward_a).reshape(-1)
    if weight is None:
        weight = torch.ones_like(target)
    weight = weight.to(reward_a).reshape(-1)
    if not (reward_a.shape == reward_b.shape == target.shape == weight.shape):
        raise ValueError(f"shape mismatch: r_a {tuple(reward_a.shape)}, r_b {tuple(reward_b.shape)}, "
                         f"target {tuple(target.shape)}, weight {tuple(weight.shape)}")
    keep = ~torch.isnan(target)
    t = torch.where(keep, target, torch.zeros_like(target))
    z = (reward_a - reward_b) - margin * (2 * t - 1)
    loss = -(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z))
    if tie_offset:
        loss = loss - _binary_entropy(t)
    if reduction == "none":
        return torch.where(keep, loss, torch.full_like(loss, float("nan")))
    w = torch.where(keep, weight, torch.zeros_like(weight))
    total = (w * torch.where(keep, loss, torch.zeros_like(loss))).sum()
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}")
    denom = w.sum()
    return total / denom if denom > 0 else total * 0.0


class BradleyTerryLoss(nn.Module):
    """Criterion module: ``loss = BradleyTerryLoss(margin=0.0)(r_a, r_b, target, weight)``."""

    def __init__(self, margin: float = 0.0, tie_offset: bool = True):
        super().__init__()
        self.margin = float(margin)
        self.tie_offset = bool(tie_offset)

    def forward(self, reward_a: torch.Tensor, reward_b: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        return bradley_terry_loss(reward_a, reward_b, target, weight, margin=self.margin, tie_offset=self.tie_offset)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, tie_offset={self.tie_offset}"


LOG2 = math.log(2.0)

__all__ = [
    "BradleyTerryLoss", "LABEL_TARGETS", "LOG2", "bradley_terry_loss", "prompt_weights", "target_from_label",
    "targets_from_labels",
]
