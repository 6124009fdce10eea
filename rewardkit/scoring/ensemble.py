"""The ensemble scorer: N reward heads on one stage model's towers, scoring the mean and the std.

Kind ``stage-ensemble``, saved and loaded like every scorer (``config.json`` + ``model.safetensors``, the
same format and version checks; :mod:`rewardkit.scoring.format`)::

    EnsembleScorer(StageEnsemble(model, heads, offsets), camera=..., render_config=...).save_pretrained(dir)
    scorer = load_scorer(dir)
    out = scorer.score_views(views, prompts)      # out.scores: the members' mean, out.std: their std
    score_meshes(meshes, prompts, scorer)[0].std  # {"global": 0.12}

``out.members`` holds each member's reward [N, B] (for ensemble disagreement on a pair's preference, as
:mod:`rewardkit.data.active` uses). The model and how its members are trained: :mod:`rewardkit.models.ensemble`,
:mod:`rewardkit.train.ensemble`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rewardkit.scoring.base import ScoreOutput, register_scorer_kind
from rewardkit.scoring.core import encode_prompts
from rewardkit.scoring.errors import ScorerError
from rewardkit.scoring.stage import Scorer, rebuild_scorer

STAGE_ENSEMBLE_KIND = "stage-ensemble"


@register_scorer_kind
class EnsembleScorer(Scorer):
    """A :class:`rewardkit.models.StageEnsemble` plus its render settings: a :class:`~rewardkit.scoring.Scorer`
    (the same constructor) whose scores are the members' mean, with their std."""

    kind = STAGE_ENSEMBLE_KIND

    def __init__(self, ensemble: torch.nn.Module, *, description: str | None = None, **settings: Any) -> None:
        super().__init__(ensemble, description=description or f"An ensemble of {ensemble.members} reward heads on "
                         f"one {ensemble.stage}-stage model: scores are the members' mean, with their std as the "
                         "uncertainty.", **settings)

    @property
    def ensemble(self) -> torch.nn.Module:
        return self.model

    @property
    def members(self) -> int:
        return int(self.ensemble.members)

    def _forward(self, views: Any, prompts: Sequence[str], per_view: bool) -> ScoreOutput:
        text_features = (encode_prompts(self.ensemble.encode_text, prompts) if self.ensemble.config.use_alignment
                         else None)
        out = self.ensemble(views, prompts, text_features=text_features, return_details=True)
        return ScoreOutput(scores=out["reward"], per_view=out["view_alignment"] if per_view else None,
                           std=out["std"], members=out["rewards"])

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), members=self.members)

    @classmethod
    def _from_config(cls, cfg: Mapping[str, Any], weights: Path, where: Path) -> "EnsembleScorer":
        from rewardkit.models.ensemble import StageEnsemble

        arch = dict(cfg.get("architecture") or {})
        if arch.get("architecture") != "StageEnsemble":
            raise ScorerError(f"{where}: unknown architecture {arch.get('architecture')!r} for kind "
                              f"{STAGE_ENSEMBLE_KIND!r} (this rewardkit knows StageEnsemble)")
        return rebuild_scorer(cls, cfg, weights, where, lambda: StageEnsemble.from_config_dict(arch), "ensemble")


__all__ = ["EnsembleScorer", "STAGE_ENSEMBLE_KIND"]
