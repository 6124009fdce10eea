"""Per-step rewards as weighted terms over reward callables.

A reward callable is anything ``fn(meshes: list[trimesh.Trimesh | None], prompts: list[str]) -> list[float]``
(an exported scorer adapter, an HTTP client, a rule). ``None`` in ``meshes`` means the sample produced
no surface; the callable decides what that scores. A step's reward is

    R = sum_terms weight * value / dims

(``dims`` is the paper's dimension normalization, e.g. 3 for a sum of three 1-5 judgements, Eq. 8).

Failures are never filled in with a constant. A callable that raises, returns the wrong number of
values, or returns ``None``/NaN for a sample either raises :class:`RewardError` (``on_error: raise``)
or marks those samples failed (``on_error: mark``): their reward is NaN, so Hi-GRPO leaves them out
of their group's statistics and masks their tokens out of the loss, and the count is logged.

A callable may also return :class:`TermValues` (``mean`` and ``std`` per sample, e.g. the mean and the
spread of an ensemble of reward models). The std is kept with the term (logged, watched by
:mod:`rewardkit.rl.guards`), and a term with ``uncertainty_penalty: k`` contributes ``mean - k * std``
to the step's reward (the uncertainty-penalised reward of the reward-model-ensemble literature on
over-optimisation); a term with a penalty whose callable returns no std is a :class:`RewardError`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from rewardkit import config as _config
from rewardkit.errors import RewardkitError
from rewardkit.rl.scorer_adapters import scorer_reward
from rewardkit.rl.term_values import RewardFn, TermValues
from rewardkit.demo.shapes import demo_shape
from rewardkit.rl.tokenizers.base import voxelize_mesh

__all__ = [
    "RewardFn",
    "RewardError",
    "RewardTerm",
    "RewardTermConfig",
    "TermValues",
    "StepReward",
    "StepRewardResult",
    "build_step_reward",
    "build_term",
    "occupancy_iou",
    "surface_f1",
    "mirror_symmetry",
    "occupied_fraction",
    "BUILTIN_REWARDS",
]

class RewardError(RewardkitError, RuntimeError):
    """A reward term failed and the step is configured to raise."""


@dataclass
class RewardTerm:
    """One weighted reward term. ``learned``: a learned reward model (a scorer or service term), watched
    by the reward-hacking guard against the step's other (anchor) terms. ``uncertainty_penalty`` k: the
    term adds ``weight * (mean - k * std) / dims``; its callable must return :class:`TermValues`."""

    name: str
    fn: RewardFn
    weight: float = 1.0
    dims: float = 1.0
    learned: bool = False
    uncertainty_penalty: float = 0.0


@dataclass
class StepRewardResult:
    total: np.ndarray  # [N], NaN where a term failed for that sample
    terms: dict[str, np.ndarray]  # raw (unweighted, unpenalised) value of each term, NaN where failed
    failures: dict[str, int] = field(default_factory=dict)  # term -> number of samples marked
    stds: dict[str, np.ndarray] = field(default_factory=dict)  # the std of the terms whose callable returns one


class StepReward:
    """The weighted terms of one Hi-GRPO step (R_high or R_low)."""

    def __init__(self, terms: Sequence[RewardTerm], on_error: str = "raise"):
        if not terms:
            raise ValueError("a step needs at least one reward term")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate reward term names: {names}")
        if on_error not in ("raise", "mark"):
            raise ValueError("on_error must be 'raise' or 'mark'")
        self.terms = list(terms)
        self.on_error = on_error

    def __call__(self, meshes: Sequence[Any], prompts: Sequence[str]) -> StepRewardResult:
        n = len(meshes)
        total = np.zeros(n, dtype=np.float64)
        values: dict[str, np.ndarray] = {}
        failures: dict[str, int] = {}
        stds: dict[str, np.ndarray] = {}
        for term in self.terms:
            try:
                raw = term.fn(list(meshes), list(prompts))
            except Exception as exc:  # re-raised or recorded, never swallowed
                if self.on_error == "raise":
                    raise RewardError(f"reward term {term.name!r} failed: {exc}") from exc
                raw = [None] * n
            std = None
            if isinstance(raw, TermValues):
                raw, std = list(raw.mean), list(raw.std)
                if len(std) != len(raw):
                    raise RewardError(f"reward term {term.name!r} returned {len(raw)} values but {len(std)} stds")
            elif term.uncertainty_penalty:
                raise RewardError(f"reward term {term.name!r} has uncertainty_penalty {term.uncertainty_penalty:g} but "
                                  "its reward returns no std (return rewardkit.rl.rewards.TermValues)")
            raw = list(raw)
            if len(raw) != n:
                raise RewardError(f"reward term {term.name!r} returned {len(raw)} values for {n} samples")
            v = np.array([np.nan if x is None else float(x) for x in raw], dtype=np.float64)
            if std is not None:
                sd = np.array([np.nan if x is None else float(x) for x in std], dtype=np.float64)
                v[~np.isfinite(sd)] = np.nan  # a value without its std is a failed sample
            bad = ~np.isfinite(v)
            if bad.any():
                if self.on_error == "raise":
                    raise RewardError(f"reward term {term.name!r} gave no value for samples {np.flatnonzero(bad).tolist()}")
                v[bad] = np.nan
                failures[term.name] = int(bad.sum())
            values[term.name] = v
            if std is not None:
                stds[term.name] = np.where(np.isfinite(v), sd, np.nan)
                total = total + term.weight * (v - term.uncertainty_penalty * stds[term.name]) / term.dims
            else:
                total = total + term.weight * v / term.dims
        return StepRewardResult(total=total, terms=values, failures=failures, stds=stds)


# -- built-in rewards of the decoded occupancy (tests and the CPU demo) -----------------------------

def _occupancy(mesh: Any, resolution: int) -> np.ndarray | None:
    """The decoded grid a policy mesh carries, or a voxelization of any other mesh."""
    return None if mesh is None else voxelize_mesh(mesh, resolution)


def _target(prompt: str, resolution: int, targets: Mapping[str, np.ndarray] | None) -> np.ndarray:
    if targets is not None and prompt in targets:
        return np.asarray(targets[prompt], dtype=bool)
    return demo_shape(prompt).occupancy(resolution)


def _surface(occ: np.ndarray) -> np.ndarray:
    p = np.pad(occ, 1)
    interior = p[2:, 1:-1, 1:-1] & p[:-2, 1:-1, 1:-1] & p[1:-1, 2:, 1:-1] & p[1:-1, :-2, 1:-1] & p[1:-1, 1:-1, 2:] & p[1:-1, 1:-1, :-2]
    return occ & ~interior


def _voxel_reward(resolution: int, targets: Mapping[str, np.ndarray] | None,
                  score: Callable[[np.ndarray, np.ndarray], float]) -> RewardFn:
    """A reward of ``score(occupancy, target occupancy)`` per mesh (0 for no mesh)."""

    def fn(meshes: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        out = []
        for mesh, prompt in zip(meshes, prompts):
            occ = _occupancy(mesh, resolution)
            out.append(0.0 if occ is None else score(occ, _target(prompt, resolution, targets)))
        return out

    return fn


def _iou(occ: np.ndarray, tgt: np.ndarray) -> float:
    union = (occ | tgt).sum()
    return float((occ & tgt).sum() / union) if union else 1.0


def _surface_f1(occ: np.ndarray, tgt: np.ndarray) -> float:
    s, t = _surface(occ), _surface(tgt)
    hit = (s & t).sum()
    return float(2 * hit / (s.sum() + t.sum())) if (s.sum() + t.sum()) else 1.0


def occupancy_iou(resolution: int = 8, targets: Mapping[str, np.ndarray] | None = None) -> RewardFn:
    """Global shape: IoU of the decoded occupancy with the prompt's target shape (0 for no mesh)."""
    return _voxel_reward(resolution, targets, _iou)


def surface_f1(resolution: int = 8, targets: Mapping[str, np.ndarray] | None = None) -> RewardFn:
    """Local detail: F1 between the surface voxels of the shape and of the prompt's target."""
    return _voxel_reward(resolution, targets, _surface_f1)


def mirror_symmetry(resolution: int = 8, axis: int = 0) -> RewardFn:
    """Local attribute: IoU of the shape with its mirror image across the grid's mid-plane on ``axis``."""

    def fn(meshes: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        out = []
        for mesh in meshes:
            occ = _occupancy(mesh, resolution)
            if occ is None or not occ.any():
                out.append(0.0)
                continue
            flip = np.flip(occ, axis=axis)
            out.append(float((occ & flip).sum() / (occ | flip).sum()))
        return out

    return fn


def occupied_fraction(resolution: int = 8) -> RewardFn:
    """Fraction of occupied voxels (a simple bandit-style reward)."""

    def fn(meshes: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        return [0.0 if (o := _occupancy(m, resolution)) is None else float(o.mean()) for m in meshes]

    return fn


BUILTIN_REWARDS: dict[str, Callable[..., RewardFn]] = {
    "occupancy_iou": occupancy_iou,
    "surface_f1": surface_f1,
    "mirror_symmetry": mirror_symmetry,
    "occupied_fraction": occupied_fraction,
}


# -- configuration ------------------------------------------------------------------------------------

def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    return getattr(importlib.import_module(module), attr)


@dataclass
class RewardTermConfig:
    """One reward term of a step in a Hi-GRPO config (``rewards_global`` / ``rewards_local``). Exactly one
    source:

    - ``builtin``: one of :data:`BUILTIN_REWARDS` (``args``: its keyword arguments; the tokenizer's
      resolution fills ``resolution`` when not given);
    - ``fn: "module:attr"``: a callable, or a factory called with ``args``;
    - ``scorer: DIR``: an exported rewardkit scorer (set) directory, scored in-process (in Python, a
      ``RewardTermConfig(scorer=...)`` may also hold a loaded scorer);
    - ``url: http://HOST:PORT``: a running ``rewardkit serve`` scoring service;
    - ``callable`` (Python only, never from a file): the reward function itself.

    For ``scorer``/``url``, ``args`` go to :func:`rewardkit.rl.scorer_adapters.scorer_reward`
    (``stage: global|local`` or ``weights``, ``empty_score``, ``device``, ``batch_size``, ``render_size``).
    """

    builtin: Literal["occupancy_iou", "surface_f1", "mirror_symmetry", "occupied_fraction"] | None = None
    fn: str | None = None
    scorer: str | None = None
    url: str | None = None
    callable: Any = None
    args: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # default: the builtin's / fn's attribute name, or scorer_<stage> / url_<stage>
    weight: float = 1.0
    dims: float = 1.0  # the term's share is weight / dims (a multi-dimensional reward model's dimensions)
    # a learned reward model, watched by the reward-hacking guard against the step's anchors (None: true
    # for scorer/url terms, false otherwise)
    learned: bool | None = None
    # k >= 0: the term adds mean - k * std (its callable must return TermValues)
    uncertainty_penalty: float = 0.0

    def __post_init__(self) -> None:
        sources = [k for k in ("builtin", "fn", "scorer", "url", "callable") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError(f"a reward term needs exactly one of builtin/fn/scorer/url, got {sources or 'none'}")
        if self.uncertainty_penalty < 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}")
        if self.fn is not None and not self.fn.partition(":")[2]:
            raise ValueError(f"fn: expected 'module:attribute', got {self.fn!r}")

    @property
    def source(self) -> str:
        return next(k for k in ("builtin", "fn", "scorer", "url", "callable") if getattr(self, k) is not None)


def build_term(spec: RewardTermConfig | Mapping[str, Any] | RewardTerm, defaults: Mapping[str, Any] | None = None
               ) -> RewardTerm:
    """The :class:`RewardTerm` of a config term (a mapping is read by the config grammar).
    ``defaults`` fill builtin ``args`` the factory accepts (e.g. the tokenizer resolution)."""
    if isinstance(spec, RewardTerm):
        return spec
    if not isinstance(spec, RewardTermConfig):
        spec = _config.from_dict(RewardTermConfig, spec)
    args, src = dict(spec.args), spec.source
    if src == "builtin":
        factory = BUILTIN_REWARDS[spec.builtin]
        import inspect

        accepted = inspect.signature(factory).parameters
        for k, v in (defaults or {}).items():
            if k in accepted:
                args.setdefault(k, v)
        fn, name = factory(**args), spec.builtin
    elif src == "fn":
        obj = _import(spec.fn)
        fn, name = (obj(**args) if args else obj), spec.fn.rpartition(":")[2]
    elif src == "callable":
        fn, name = spec.callable, "reward"
    elif src == "scorer":
        fn, name = scorer_reward(spec.scorer, **args), f"scorer_{args.get('stage', 'sum')}"
    else:
        fn, name = scorer_reward(url=spec.url, **args), f"url_{args.get('stage', 'sum')}"
    learned = src in ("scorer", "url") if spec.learned is None else spec.learned
    return RewardTerm(name=spec.name or name, fn=fn, weight=spec.weight, dims=spec.dims, learned=learned,
                      uncertainty_penalty=spec.uncertainty_penalty)


def build_step_reward(
    terms: Sequence[RewardTermConfig | Mapping[str, Any] | RewardTerm], on_error: str = "raise",
    defaults: Mapping[str, Any] | None = None,
) -> StepReward:
    return StepReward([build_term(t, defaults) for t in terms], on_error=on_error)


def group_stats(values: np.ndarray, group_size: int) -> tuple[float, float]:
    """(mean, mean within-group population std) of a step's values, ignoring NaN (failed) samples."""
    v = np.asarray(values, dtype=np.float64).reshape(-1, group_size)
    if np.isnan(v).all():
        return math.nan, math.nan
    with np.errstate(invalid="ignore"):
        stds = np.nanstd(v, axis=1)
    return float(np.nanmean(v)), float(np.nanmean(stds)) if np.isfinite(stds).any() else math.nan
