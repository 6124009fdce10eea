"""The scorer interface: :class:`ScoreOutput`, :class:`BaseScorer`, :class:`ScorerSet`, and loading a scorer
directory through the registry of scorer kinds.

A scorer is a torch module plus the camera protocol and render settings its views must be rendered with.
Every kind (the stage reward model in :mod:`rewardkit.scoring.stage`, the baselines in
:mod:`rewardkit.scoring.baselines`) subclasses :class:`BaseScorer` and registers itself with
:func:`register_scorer_kind`; :func:`load_scorer` reads ``config.json`` (:mod:`rewardkit.scoring.format`) and
hands it to the class registered for its ``kind``. Importing :mod:`rewardkit.scoring` imports both, so
every kind this rewardkit ships is registered before anything is loaded.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from rewardkit import __version__
from rewardkit.devices import resolve_device
from rewardkit.scoring import core
from rewardkit.scoring.card import default_description, model_card, set_card
from rewardkit.scoring.errors import ScorerError
from rewardkit.scoring.resolve import resolve_scorer_dir
from rewardkit.scoring.format import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    SCORER_FORMAT,
    SCORER_SET_FORMAT,
    WEIGHTS_FILE,
    camera_protocol,
    check_versions,
    contiguous_state_dict,
    default_render_config,
    jsonable,
    library_versions,
    read_config,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ #
# outputs
# ------------------------------------------------------------------------------------------------------ #
@dataclass
class ScoreOutput:
    """One scorer's result for a batch: ``scores`` [B] and, when asked for, ``per_view`` [B, V] (each view's
    own score on the scorer's scale, e.g. the scaled cosine of that view alone with the prompt). An ensemble
    (kind ``stage-ensemble``) also gives ``std`` [B], the spread of its members around the mean in
    ``scores``, and ``members`` [N, B], each member's score."""

    scores: torch.Tensor
    per_view: torch.Tensor | None = None
    std: torch.Tensor | None = None
    members: torch.Tensor | None = None

    def tolist(self) -> list[float]:
        return [float(x) for x in self.scores.detach().cpu().tolist()]


# ------------------------------------------------------------------------------------------------------ #
# the scorer interface
# ------------------------------------------------------------------------------------------------------ #
def _write_config(directory: Path, cfg: dict[str, Any], card: str) -> Path:
    """Write a scorer (set) directory's config.json and model card; returns ``directory``."""
    (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (directory / CARD_FILE).write_text(card)
    return directory


class BaseScorer(ABC):
    """What every scorer (stage model or baseline) offers.

    ``score_views(views, prompts)`` scores already-rendered views: a float tensor [B, V, 3, H, W] with RGB
    in [0, 1] (uint8 0..255 accepted), views of several modes concatenated in ``modes`` order, or a dict
    ``{mode: tensor}``. Runs under ``torch.no_grad()`` and ``eval()`` unless ``grad=True``, in which case
    the scores are differentiable with respect to the view pixels.
    """

    kind: str = "base"
    name: str
    stage: str | None
    modes: list[str]

    def __init__(self, *, name: str, stage: str | None, modes: Sequence[str], camera: Any = "orbit6",
                 render_config: Mapping[str, Any] | None = None, training_data: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Any] | None = None, description: str | None = None) -> None:
        self.name = name
        self.stage = stage
        self.modes = list(modes)
        self.camera = camera_protocol(camera)
        self.render_config = dict(render_config) if render_config else default_render_config()
        self.training_data = dict(training_data or {})
        self.metrics = dict(metrics or {})
        self.description = description
        self.load_warnings: list[str] = []
        self.source: str | None = None

    # -- to be provided by subclasses ------------------------------------------------------------- #
    @property
    @abstractmethod
    def module(self) -> torch.nn.Module:
        """The torch module holding every weight (saved to ``model.safetensors``)."""

    @abstractmethod
    def _forward(self, views: Any, prompts: Sequence[str], per_view: bool) -> ScoreOutput:
        """Score checked views (see :meth:`score_views`); grad mode and eval mode are already set."""

    @abstractmethod
    def _architecture_config(self) -> dict[str, Any]:
        """What ``_from_config`` needs to rebuild the module (``config.json``'s ``architecture``)."""

    @classmethod
    @abstractmethod
    def _from_config(cls, cfg: Mapping[str, Any], weights: Path, where: Path) -> BaseScorer:
        """Rebuild a scorer of this kind from its ``config.json`` dict and its weights file."""

    # -- common ------------------------------------------------------------------------------------ #
    @property
    def device(self) -> torch.device:
        try:
            return next(self.module.parameters()).device
        except StopIteration:  # pragma: no cover
            return torch.device("cpu")

    def to(self, device: str | torch.device) -> "BaseScorer":
        self.module.to(device)
        return self

    @property
    def render_size(self) -> int:
        return int(self.camera.size)

    def score_views(self, views: Any, prompts: Sequence[str] | str, *, grad: bool = False,
                    per_view: bool = False) -> ScoreOutput:
        """Score rendered views. ``prompts``: one string per sample (a single string is broadcast)."""
        views = _check_views(views, self.modes)
        b = _batch_size(views)
        if isinstance(prompts, str):
            prompts = [prompts] * b
        prompts = list(prompts)
        if len(prompts) != b:
            raise ValueError(f"{len(prompts)} prompts for {b} samples")
        module = self.module
        was_training = module.training
        if was_training:
            module.eval()
        try:
            with torch.set_grad_enabled(grad):
                return self._forward(views, prompts, per_view)
        finally:
            if was_training:
                module.train(True)

    __call__ = score_views

    def score_meshes(self, meshes: Any, prompts: Sequence[str] | str, **kw: Any) -> list:
        """Render and score meshes (see :func:`rewardkit.scoring.score_meshes`)."""
        return core.score_meshes(meshes, prompts, ScorerSet([self]), **kw)

    def config_dict(self) -> dict[str, Any]:
        return {
            "format": SCORER_FORMAT,
            "format_version": FORMAT_VERSION,
            "rewardkit_version": __version__,
            "library_versions": library_versions(),
            "kind": self.kind,
            "name": self.name,
            "stage": self.stage,
            "description": self.description or default_description(self.kind, self.stage),
            "architecture": self._architecture_config(),
            "camera_protocol": self.camera.to_dict(),
            "render_modes": list(self.modes),
            "render_config": dict(self.render_config),
            "training_data": self.training_data,
            "metrics": self.metrics,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and the ``README.md`` model card."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config_dict()
        state = contiguous_state_dict(self.module)
        save_file(state, str(directory / WEIGHTS_FILE),
                  metadata={"format": "pt", "rewardkit_version": __version__, "kind": self.kind})
        return _write_config(directory, jsonable(cfg), model_card(cfg))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "auto",
                        revision: str | None = None) -> "BaseScorer":
        """A scorer directory or Hugging Face Hub id (see :func:`load_scorer`)."""
        scorer = load_scorer(directory, device=device, revision=revision)
        if not isinstance(scorer, cls):
            raise ScorerError(f"{directory}: holds a {type(scorer).__name__}, not a {cls.__name__}")
        return scorer

    def describe(self) -> dict[str, Any]:
        """A short JSON-able summary (for /health and --verbose)."""
        return {"name": self.name, "kind": self.kind, "stage": self.stage, "modes": list(self.modes),
                "camera": self.camera.name, "views": self.camera.n_views, "render_size": self.render_size,
                "source": self.source}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, stage={self.stage!r}, modes={self.modes}, "
                f"camera={self.camera.name}@{self.render_size}px)")


# ------------------------------------------------------------------------------------------------------ #
# scorer sets
# ------------------------------------------------------------------------------------------------------ #
class ScorerSet:
    """Named scorers used together, e.g. ``{"global": ..., "local": ...}`` for Hi-GRPO. Scoring through a set
    renders each mesh once for all of them (see :mod:`rewardkit.scoring.api`)."""

    def __init__(self, scorers: Mapping[str, BaseScorer] | Sequence[BaseScorer] | None = None, *,
                 global_scorer: BaseScorer | None = None, local_scorer: BaseScorer | None = None) -> None:
        items: dict[str, BaseScorer] = {}
        if isinstance(scorers, Mapping):
            items.update(scorers)
        elif scorers is not None:
            for s in scorers:
                key = s.name
                i = 2
                while key in items:
                    key, i = f"{s.name}-{i}", i + 1
                items[key] = s
        if global_scorer is not None:
            items["global"] = global_scorer
        if local_scorer is not None:
            items["local"] = local_scorer
        if not items:
            raise ValueError("a ScorerSet needs at least one scorer")
        for key, s in items.items():
            if not isinstance(s, BaseScorer):
                raise TypeError(f"{key!r} is a {type(s).__name__}, not a scorer")
        self.scorers = items
        self.source: str | None = None

    def __getitem__(self, key: str) -> BaseScorer:
        return self.scorers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scorers)

    def __len__(self) -> int:
        return len(self.scorers)

    def items(self):
        return self.scorers.items()

    def names(self) -> list[str]:
        return list(self.scorers)

    @property
    def global_scorer(self) -> BaseScorer | None:
        return self.scorers.get("global")

    @property
    def local_scorer(self) -> BaseScorer | None:
        return self.scorers.get("local")

    def to(self, device: str | torch.device) -> "ScorerSet":
        for s in self.scorers.values():
            s.to(device)
        return self

    def score_views(self, views: Mapping[str, torch.Tensor], prompts: Sequence[str] | str, *, grad: bool = False,
                    per_view: bool = False) -> dict[str, ScoreOutput]:
        """Score a dict of views ``{mode: [B, V, 3, H, W]}`` with every scorer (each takes its own modes)."""
        return {k: s.score_views({m: views[m] for m in s.modes} if isinstance(views, Mapping) else views,
                                 prompts, grad=grad, per_view=per_view) for k, s in self.scorers.items()}

    def score_meshes(self, meshes: Any, prompts: Sequence[str] | str, **kw: Any) -> list:
        """Render each mesh once and score it with every scorer (see :func:`rewardkit.scoring.score_meshes`)."""
        return core.score_meshes(meshes, prompts, self, **kw)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for key, s in self.scorers.items():
            s.save_pretrained(directory / key)
        cfg = {"format": SCORER_SET_FORMAT, "format_version": FORMAT_VERSION, "rewardkit_version": __version__,
               "scorers": {k: k for k in self.scorers}}
        return _write_config(directory, cfg, set_card(self))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "auto",
                        revision: str | None = None) -> "ScorerSet":
        """A scorer (set) directory or Hugging Face Hub id (see :func:`load_scorer`)."""
        loaded = load_scorer(directory, device=device, revision=revision)
        if isinstance(loaded, BaseScorer):
            return cls([loaded])
        return loaded

    def describe(self) -> dict[str, Any]:
        return {k: s.describe() for k, s in self.scorers.items()}

    def __repr__(self) -> str:
        return f"ScorerSet({', '.join(f'{k}={v!r}' for k, v in self.scorers.items())})"


# ------------------------------------------------------------------------------------------------------ #
# the registry of scorer kinds
# ------------------------------------------------------------------------------------------------------ #
SCORER_KINDS: dict[str, type[BaseScorer]] = {}
"""``config.json`` ``kind`` -> the :class:`BaseScorer` subclass that loads it (filled by :func:`register_scorer_kind`)."""

S = TypeVar("S", bound=type)


def register_scorer_kind(cls: S) -> S:
    """Class decorator: ``load_scorer`` loads directories whose ``kind`` is ``cls.kind`` with ``cls._from_config``."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} has no kind to register")
    if SCORER_KINDS.get(kind, cls) is not cls:
        raise ValueError(f"scorer kind {kind!r} is already registered by {SCORER_KINDS[kind].__name__}")
    SCORER_KINDS[kind] = cls
    return cls


# ------------------------------------------------------------------------------------------------------ #
# loading
# ------------------------------------------------------------------------------------------------------ #
def load_scorer(directory: str | os.PathLike, *, device: str | torch.device = "auto",
                revision: str | None = None) -> "BaseScorer | ScorerSet":
    """Load a scorer or scorer-set directory (no pickles: JSON config + safetensors weights), or a Hugging
    Face Hub id ``org/name`` (at ``revision``) that is not a local folder. ``device``: the one device rule
    (:func:`rewardkit.devices.resolve_device`, default ``auto``)."""
    directory, device = resolve_scorer_dir(directory, revision=revision), resolve_device(device)
    cfg = read_config(directory)
    if cfg.get("format") == SCORER_SET_FORMAT:
        check_versions(cfg, directory, expected_format=SCORER_SET_FORMAT)
        entries = cfg.get("scorers")
        if not isinstance(entries, Mapping) or not entries:
            raise ScorerError(f"{directory}: scorer set config.json lists no scorers")
        scorers = {}
        for key, sub in entries.items():
            sub_dir = (directory / str(sub)).resolve()
            if directory.resolve() not in sub_dir.parents:
                raise ScorerError(f"{directory}: scorer {key!r} points outside the set directory ({sub})")
            s = load_scorer(sub_dir, device=device)
            if not isinstance(s, BaseScorer):
                raise ScorerError(f"{sub_dir}: nested scorer sets are not supported")
            scorers[str(key)] = s
        out = ScorerSet(scorers)
        out.source = str(directory)
        return out
    warnings = check_versions(cfg, directory, expected_format=SCORER_FORMAT)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ScorerError(f"{directory}: model.safetensors is missing")
    kind = cfg.get("kind")
    if kind not in SCORER_KINDS:
        raise ScorerError(f"{directory}: unknown scorer kind {kind!r}; this rewardkit knows "
                          f"{', '.join(SCORER_KINDS)}")
    scorer: BaseScorer = SCORER_KINDS[kind]._from_config(cfg, weights, directory)
    for w in warnings:
        log.warning("%s: %s", directory, w)
    scorer.load_warnings = warnings
    scorer.source = str(directory)
    return scorer.to(device)


# ------------------------------------------------------------------------------------------------------ #
# view checks
# ------------------------------------------------------------------------------------------------------ #
def _check_views(views: Any, modes: Sequence[str]) -> Any:
    if isinstance(views, Mapping):
        missing = [m for m in modes if m not in views]
        if missing:
            raise ValueError(f"this scorer needs render modes {list(modes)}; missing {missing}")
        out = {}
        for m in modes:
            v = torch.as_tensor(views[m]) if not isinstance(views[m], torch.Tensor) else views[m]
            if v.dim() == 4:
                v = v.unsqueeze(0)
            if v.dim() != 5 or v.shape[2] != 3:
                raise ValueError(f"views[{m!r}] must be [B, V, 3, H, W], got {tuple(v.shape)}")
            out[m] = v
        if len({v.shape[0] for v in out.values()}) > 1:
            raise ValueError("all modes must have the same batch size")
        return out
    v = views if isinstance(views, torch.Tensor) else torch.as_tensor(views)
    if v.dim() == 4:
        v = v.unsqueeze(0)
    if v.dim() != 5 or v.shape[2] != 3:
        raise ValueError(f"views must be [B, V, 3, H, W] (or [V, 3, H, W] for one sample), got {tuple(v.shape)}")
    return v


def _batch_size(views: Any) -> int:
    if isinstance(views, Mapping):
        return int(next(iter(views.values())).shape[0])
    return int(views.shape[0])



__all__ = ["BaseScorer", "SCORER_KINDS", "ScoreOutput", "ScorerSet", "load_scorer", "register_scorer_kind"]
