"""The stage scorer: an exported per-stage reward model plus the render settings it was trained on.

A :class:`Scorer` wraps a :class:`rewardkit.models.StageRewardModel`, so scoring a mesh renders exactly the
views the model learned from (its camera protocol, render modes and render config). It is saved and loaded
like every scorer (:mod:`rewardkit.scoring.format`, ``kind = "stage-model"``)::

    Scorer(model, camera="orbit6", render_size=224, training_data=..., metrics=...).save_pretrained(dir)
    scorer = Scorer.from_pretrained(dir)              # or rewardkit.scoring.load_scorer(dir)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from rewardkit.scoring.base import BaseScorer, ScoreOutput, register_scorer_kind
from rewardkit.scoring.core import encode_prompts
from rewardkit.scoring.errors import ScorerError
from rewardkit.scoring.format import camera_protocol, load_weights

STAGE_MODEL_KIND = "stage-model"

S = TypeVar("S", bound=BaseScorer)


def rebuild_scorer(cls: type[S], cfg: Mapping[str, Any], weights: Path, where: Path,
                   build: Callable[[], torch.nn.Module], what: str) -> S:
    """The part of ``_from_config`` the stage scorers (``Scorer``, ``EnsembleScorer``) share: ``build()`` the
    module from the checked architecture (a failure: :class:`ScorerError` "``where``: cannot build the ``what``
    from config.json: ..."), load its weights and wrap it in ``cls`` with the render settings, name and card
    fields ``config.json`` records."""
    try:
        module = build()
    except Exception as exc:
        raise ScorerError(f"{where}: cannot build the {what} from config.json: {type(exc).__name__}: {exc}") from exc
    load_weights(module, weights, where)
    return cls(module, camera=cfg["camera_protocol"], render_config=cfg.get("render_config"),
               name=cfg.get("name"), training_data=cfg.get("training_data"), metrics=cfg.get("metrics"),
               description=cfg.get("description"))


@register_scorer_kind
class Scorer(BaseScorer):
    """An exported per-stage reward model (:class:`rewardkit.models.StageRewardModel`) plus its render
    settings. ``Scorer(model, camera="orbit6", render_size=224, training_data=..., metrics=...)``."""

    kind = STAGE_MODEL_KIND

    def __init__(self, model: torch.nn.Module, *, camera: Any = "orbit6", render_size: int | None = None,
                 render_config: Mapping[str, Any] | None = None, name: str | None = None,
                 training_data: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                 description: str | None = None) -> None:
        proto = camera_protocol(camera, size=render_size)
        super().__init__(name=name or model.stage, stage=model.stage, modes=model.modes, camera=proto,
                         render_config=render_config, training_data=training_data, metrics=metrics,
                         description=description)
        self.model = model.eval()

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def _architecture_config(self) -> dict[str, Any]:
        return dict(self.model.to_config_dict(), architecture=type(self.model).__name__)

    def _forward(self, views: Any, prompts: Sequence[str], per_view: bool) -> ScoreOutput:
        text_features = encode_prompts(self.model.encode_text, prompts) if self.model.config.use_alignment else None
        out = self.model(views, prompts, text_features=text_features, return_details=True)
        return ScoreOutput(scores=out["reward"], per_view=out["view_alignment"] if per_view else None)

    @classmethod
    def _from_config(cls, cfg: Mapping[str, Any], weights: Path, where: Path) -> "Scorer":
        from rewardkit.models import StageRewardModel

        arch = dict(cfg.get("architecture") or {})
        arch_name = arch.pop("architecture", "StageRewardModel")
        if arch_name != "StageRewardModel":
            raise ScorerError(f"{where}: unknown architecture {arch_name!r} (this rewardkit knows StageRewardModel)")
        return rebuild_scorer(cls, cfg, weights, where, lambda: StageRewardModel.from_config_dict(arch), "model")


__all__ = ["STAGE_MODEL_KIND", "Scorer"]
