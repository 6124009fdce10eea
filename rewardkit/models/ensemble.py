"""An ensemble of reward heads on one stage model's towers: the mean and the spread of N members.

:class:`StageEnsemble` holds one trained :class:`~rewardkit.models.StageRewardModel` (the *base*: its image
and text towers, and its own fusion + score head, member 0) and ``N - 1`` further :class:`RewardHead` s
(fusion, quality head, logit scale), each trained on a bootstrap resample of the preferences with its own
seed on the base's frozen view and prompt features (:mod:`rewardkit.train.ensemble`). A forward encodes the
views and prompts **once** and runs every head on them, so an N-member ensemble costs one tower pass plus N
tiny heads (a shared-encoder ensemble, as in Zhang et al. 2024, "Improving Reinforcement Learning from
Human Feedback with Efficient Reward Model Ensemble"; Coste et al. 2023, "Reward Model Ensembles Help
Mitigate Overoptimization", ensemble whole models).

What the spread measures: disagreement among heads that read the same tower features. It is large where
the preferences do not pin the head down (pairs and shapes unlike the training data); it does not see
uncertainty in the towers themselves.

Bradley-Terry rewards are defined up to a constant, so each member carries an ``offset`` that puts its mean
reward on the training candidates at the base's mean: the members' std then measures disagreement, not
arbitrary shifts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rewardkit.models.stage import StageRewardModel


class RewardHead(nn.Module):
    """The part of a :class:`StageRewardModel` after the towers: view fusion, quality head, logit scale."""

    def __init__(self, fusion: nn.Module, quality: nn.Module | None, logit_scale: torch.Tensor):
        super().__init__()
        self.fusion = fusion
        self.quality = quality
        self.logit_scale = nn.Parameter(logit_scale.detach().clone())

    @classmethod
    def from_model(cls, model: StageRewardModel) -> RewardHead:
        """A copy of ``model``'s own head (fusion, quality, logit scale)."""
        return cls(copy.deepcopy(model.fusion), copy.deepcopy(model.quality), model.logit_scale)


def head_reward(fusion: nn.Module, quality: nn.Module | None, logit_scale: torch.Tensor, feats: torch.Tensor,
                mode_index: torch.Tensor, view_index: torch.Tensor, mask: torch.Tensor,
                txt: torch.Tensor | None) -> torch.Tensor:
    """The reward [B] of one head on per-view features [B, V, D] and normalised prompt features [B, D]
    (``None``: no alignment term), exactly as :meth:`StageRewardModel.forward` computes it."""
    pooled, _ = fusion(feats, mode_index, view_index, mask)
    reward = pooled.new_zeros(pooled.shape[0])
    if txt is not None:
        scale = logit_scale.clamp(max=math.log(100.0)).exp()
        reward = reward + scale * (F.normalize(pooled, dim=-1) * txt.to(pooled)).sum(-1)
    if quality is not None:
        reward = reward + quality(pooled).squeeze(-1)
    return reward


class StageEnsemble(nn.Module):
    """``base`` (member 0) plus ``heads`` (members 1..N-1); see the module docstring."""

    def __init__(self, base: StageRewardModel, heads: Sequence[RewardHead] = (),
                 offsets: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        self.base = base
        self.heads = nn.ModuleList(list(heads))
        n = 1 + len(self.heads)
        off = torch.zeros(n) if offsets is None else torch.as_tensor(offsets, dtype=torch.float32).reshape(-1)
        if off.numel() != n:
            raise ValueError(f"{off.numel()} offsets for {n} members")
        self.register_buffer("offsets", off.clone())

    @property
    def members(self) -> int:
        return 1 + len(self.heads)

    @property
    def stage(self) -> str:
        return self.base.stage

    @property
    def modes(self) -> list[str]:
        return self.base.modes

    @property
    def config(self):
        return self.base.config

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.base.encode_text(prompts)

    def _heads(self) -> list[tuple[nn.Module, nn.Module | None, torch.Tensor]]:
        return [(self.base.fusion, self.base.quality, self.base.logit_scale)] + [
            (h.fusion, h.quality, h.logit_scale) for h in self.heads]

    def member_rewards(self, views: Any, prompts: Sequence[str] | None = None, *,
                       text_features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``rewards`` [N, B] (offsets applied) and the base's ``view_alignment`` [B, V]. ``views`` as for
        :meth:`StageRewardModel.forward` (pixels ``{mode: [B, V, 3, H, W]}``, or cached frozen-trunk features)."""
        feats, mode_index, view_index = self.base.encode_views(views)
        b, v, _ = feats.shape
        mask = torch.ones(b, v, dtype=torch.bool, device=feats.device)
        txt = None
        if self.base.config.use_alignment:
            if text_features is None:
                if prompts is None:
                    raise ValueError("pass prompts or text_features")
                text_features = self.base.encode_text(prompts)
            txt = F.normalize(text_features.to(feats), dim=-1)
        rewards = torch.stack([head_reward(f, q, s, feats, mode_index, view_index, mask, txt)
                               for f, q, s in self._heads()])
        rewards = rewards - self.offsets.to(rewards).unsqueeze(1)
        if txt is not None:
            scale = self.base.logit_scale.clamp(max=math.log(100.0)).exp()
            view_alignment = scale * torch.einsum("bvd,bd->bv", F.normalize(feats, dim=-1), txt)
        else:
            view_alignment = feats.new_zeros(b, v)
        return {"rewards": rewards, "view_alignment": view_alignment}

    def forward(self, views: Any, prompts: Sequence[str] | None = None, *,
                text_features: torch.Tensor | None = None, return_details: bool = False):
        """The members' mean reward [B]; with ``return_details`` a dict adding ``std`` [B] (population std
        over the members; 0 for one member), ``rewards`` [N, B] and ``view_alignment`` [B, V]."""
        out = self.member_rewards(views, prompts, text_features=text_features)
        r = out["rewards"]
        mean = r.mean(0)
        if not return_details:
            return mean
        std = r.std(0, unbiased=False) if r.shape[0] > 1 else torch.zeros_like(mean)
        return {"reward": mean, "std": std, **out}

    # -- config ---------------------------------------------------------------------------------------
    def to_config_dict(self) -> dict[str, Any]:
        return {"architecture": "StageEnsemble", "members": self.members, "base": self.base.to_config_dict()}

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> StageEnsemble:
        base_cfg = d.get("base")
        members = d.get("members")
        if not isinstance(base_cfg, Mapping):
            raise ValueError("ensemble config has no 'base' model config")
        if not isinstance(members, int) or members < 1:
            raise ValueError(f"ensemble config: 'members' must be a positive integer, got {members!r}")
        base = StageRewardModel.from_config_dict(base_cfg)
        heads = [RewardHead.from_model(base) for _ in range(members - 1)]
        return cls(base, heads)


__all__ = ["RewardHead", "StageEnsemble", "head_reward"]
