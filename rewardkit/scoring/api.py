"""Batched scoring of meshes and of already-rendered views.

::

    from rewardkit.scoring import load_scorer, score_meshes
    scorers = load_scorer("scorers/")                    # a ScorerSet {global, local} or one Scorer
    results = score_meshes(["a.glb", "b.obj"], "a red chair", scorers)
    results[0].scores                                    # {"global": 1.23, "local": 0.87}

One model load serves every mesh. Each mesh is loaded and rendered **once** for all scorers: the render
modes the scorers need are rendered together (``geometry`` for the global model, ``rgb`` for the local
one) with the camera protocol and render config the scorers were trained on. Loading and rendering run in
one long-lived render thread per process (its OpenGL contexts and compiled shaders are reused by every
later call; ``close_renderers()`` releases them) while the models score the previous batch, so a mesh
costs about max(render, forward) rather than their sum. Forwards run in batches of ``batch_size`` meshes
under ``torch.no_grad()`` in eval mode; results do not depend on the order or the batch a mesh lands in
beyond float rounding.

A mesh that cannot be loaded or rendered gets a :class:`MeshScore` with ``error`` set and no scores; the
others are scored anyway (``on_error="raise"`` raises instead). Mesh files are loaded in the process-wide
:class:`~rewardkit.io.IsolatedLoader` (per-mesh time limit and memory cap, :class:`~rewardkit.io.MeshLimits`
from ``limits=`` or the ``REWARDKIT_MESH_*`` environment), so one hostile file cannot hang the render thread.
"""

from __future__ import annotations

import inspect

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from rewardkit.scoring import core
from rewardkit.scoring.base import BaseScorer, ScoreOutput, ScorerSet, load_scorer
from rewardkit.scoring.core import MeshLike, MeshScore, ScoringTimings, close_renderers, render_groups, views_to_tensor


def as_scorer_set(scorers: Any, *, device: str | torch.device | None = None) -> ScorerSet:
    """A :class:`ScorerSet` from a set, one scorer, a list or dict of scorers, or scorer directories / Hub ids
    (loaded on ``device``, default ``auto``; objects are moved only when ``device`` is given)."""
    from rewardkit.devices import resolve_device  # issue 15: the one device rule

    device = resolve_device(device) if device is not None else None
    if isinstance(scorers, ScorerSet):
        out = scorers
    elif isinstance(scorers, BaseScorer):
        out = ScorerSet([scorers])
    elif isinstance(scorers, (str, os.PathLike)):
        loaded = load_scorer(scorers, device=device or "auto")
        out = loaded if isinstance(loaded, ScorerSet) else ScorerSet([loaded])
    elif isinstance(scorers, Mapping):
        out = ScorerSet({k: (v if isinstance(v, BaseScorer) else _single(load_scorer(v))) for k, v in scorers.items()})
    elif isinstance(scorers, Iterable):
        items: list[BaseScorer] = []
        named: dict[str, BaseScorer] = {}
        for s in scorers:
            s = load_scorer(s, device=device or "auto") if isinstance(s, (str, os.PathLike)) else s
            if isinstance(s, ScorerSet):
                for k, v in s.items():
                    key, i = k, 2
                    while key in named:
                        key, i = f"{k}-{i}", i + 1
                    named[key] = v
            else:
                items.append(s)
        for s in items:
            key, i = s.name, 2
            while key in named:
                key, i = f"{s.name}-{i}", i + 1
            named[key] = s
        out = ScorerSet(named)
    else:
        raise TypeError(f"cannot use {type(scorers).__name__} as scorers")
    if device is not None:
        out.to(device)
    return out


def _single(s: Any) -> BaseScorer:
    if isinstance(s, ScorerSet):
        raise TypeError("a scorer set cannot be nested inside a dict of scorers")
    return s


def score_meshes(meshes: Sequence[MeshLike] | MeshLike, prompts: Sequence[str] | str, scorers: Any,
                 **options: Any) -> list[MeshScore]:
    """Score meshes (paths, trimesh objects or loaded meshes) against their prompts with every scorer.

    ``scorers``: a :class:`ScorerSet`, a scorer, a list/dict of them, or scorer directories
    (:func:`as_scorer_set`). The options and what they mean are those of
    :func:`rewardkit.scoring.core.score_meshes` (one signature: ``batch_size``, ``per_view``, ``render_size``,
    ``device``, ``up``, ``prefetch``, ``on_error``, ``timings``, ``progress``, ``limits``).
    """
    return core.score_meshes(meshes, prompts, as_scorer_set(scorers, device=options.pop("device", None)), **options)


score_meshes.__signature__ = inspect.signature(core.score_meshes)  # help() and IDEs show the options


def score_views(views: Any, prompts: Sequence[str] | str, scorers: Any, *, grad: bool = False,
                per_view: bool = False) -> dict[str, ScoreOutput]:
    """Score already-rendered views with every scorer: ``views`` is ``{mode: [B, V, 3, H, W]}`` (float in
    [0, 1] or uint8) or, for a single-mode scorer, a tensor. With ``grad=True`` the scores are
    differentiable with respect to the views (for gradient-based guidance or reward backprop)."""
    scorer_set = as_scorer_set(scorers)
    out = {}
    for name, s in scorer_set.items():
        v = {m: views[m] for m in s.modes} if isinstance(views, Mapping) else views
        out[name] = s.score_views(v, prompts, grad=grad, per_view=per_view)
    return out


def render_views(mesh: MeshLike, scorers: Any, *, render_size: int | None = None, up: str = "+y",
                 renderer: Any = None) -> dict[str, torch.Tensor]:
    """Render one mesh the way ``scorers`` expect: ``{mode: uint8 [V, 3, H, W]}`` (single render group)."""
    scorer_set = as_scorer_set(scorers)
    groups = core.render_groups(scorer_set, render_size)
    if len(groups) != 1:
        raise ValueError("these scorers use different camera protocols or render configs; render per scorer")
    if renderer is not None:
        item = core.render_item(0, mesh, "", groups, up, renderer)
    else:
        item = core.render_pool().submit(core.render_item, 0, mesh, "", groups, up).result()
    if item.error:
        raise RuntimeError(f"{item.name}: {item.error}")
    return item.views[0]


__all__ = ["MeshScore", "ScoringTimings", "as_scorer_set", "close_renderers", "render_groups", "render_views",
           "score_meshes", "score_views", "views_to_tensor"]
