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

import json
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from rewardkit.scoring.export import BaseScorer, ScoreOutput, ScorerSet, load_scorer, render_config_object

MeshLike = Any  # str | PathLike | trimesh.Trimesh | trimesh.Scene | rewardkit.io.LoadedMesh


@dataclass
class MeshScore:
    """The scores of one mesh: ``scores[name]`` per scorer (``global``, ``local``, ...), ``per_view[name]``
    when asked for, ``error`` when the mesh could not be scored."""

    mesh: str
    prompt: str
    scores: dict[str, float] = field(default_factory=dict)
    per_view: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.per_view:
            d.pop("per_view")
        return d


@dataclass
class ScoringTimings:
    """Wall-clock breakdown of one :func:`score_meshes` call (seconds)."""

    total: float = 0.0
    load: float = 0.0
    render: float = 0.0
    forward: float = 0.0
    n_meshes: int = 0
    n_forwards: int = 0

    def per_mesh(self) -> float:
        return self.total / max(self.n_meshes, 1)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def as_scorer_set(scorers: Any, *, device: str | torch.device | None = None) -> ScorerSet:
    """A :class:`ScorerSet` from a set, one scorer, a list or dict of scorers, or scorer directories."""
    if isinstance(scorers, ScorerSet):
        out = scorers
    elif isinstance(scorers, BaseScorer):
        out = ScorerSet([scorers])
    elif isinstance(scorers, (str, os.PathLike)):
        loaded = load_scorer(scorers, device=device or "cpu")
        out = loaded if isinstance(loaded, ScorerSet) else ScorerSet([loaded])
    elif isinstance(scorers, Mapping):
        out = ScorerSet({k: (v if isinstance(v, BaseScorer) else _single(load_scorer(v))) for k, v in scorers.items()})
    elif isinstance(scorers, Iterable):
        items: list[BaseScorer] = []
        named: dict[str, BaseScorer] = {}
        for s in scorers:
            s = load_scorer(s, device=device or "cpu") if isinstance(s, (str, os.PathLike)) else s
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


# ---------------------------------------------------------------------------------------------------- #
# render groups: scorers that share a camera protocol and render config share one render pass
# ---------------------------------------------------------------------------------------------------- #
@dataclass
class _RenderGroup:
    protocol: Any
    render_config: Any
    modes: list[str]
    names: list[str]


def render_groups(scorers: ScorerSet, render_size: int | None = None) -> list[_RenderGroup]:
    groups: dict[str, _RenderGroup] = {}
    for name, s in scorers.items():
        proto = s.camera.with_size(render_size) if render_size else s.camera
        key = json.dumps([proto.to_dict(), s.render_config], sort_keys=True)
        g = groups.get(key)
        if g is None:
            g = groups[key] = _RenderGroup(proto, render_config_object(s.render_config), [], [])
        g.names.append(name)
        for m in s.modes:
            if m not in g.modes:
                g.modes.append(m)
    return list(groups.values())


def views_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """[H, W, 3] uint8 images -> uint8 tensor [V, 3, H, W]."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _mesh_name(mesh: MeshLike, i: int) -> str:
    if isinstance(mesh, (str, os.PathLike)):
        return str(mesh)
    path = getattr(mesh, "path", None)
    if isinstance(path, str):
        return path
    return f"<mesh {i}>"


def _load(mesh: MeshLike, up: str, limits: Any = None):
    import trimesh

    from rewardkit.io import LoadedMesh, MeshLimits, default_loader, from_trimesh

    if isinstance(mesh, LoadedMesh):
        return mesh
    if isinstance(mesh, (trimesh.Trimesh, trimesh.Scene)):
        return from_trimesh(mesh, up=up)
    return default_loader().load(mesh, up=up, limits=limits or MeshLimits.from_env())


def _describe_error(exc: BaseException) -> str:
    from rewardkit.io import MeshError

    if isinstance(exc, MeshError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class _Item:
    __slots__ = ("index", "name", "prompt", "views", "error", "warnings", "load_s", "render_s")

    def __init__(self, index: int, name: str, prompt: str) -> None:
        self.index, self.name, self.prompt = index, name, prompt
        self.views: dict[int, dict[str, torch.Tensor]] = {}
        self.error: str | None = None
        self.warnings: list[str] = []
        self.load_s = self.render_s = 0.0


# One long-lived render thread per process: its OpenGL contexts (one per render config) and their compiled
# shaders are created once and reused by every later call, so a trainer calling score_meshes per step
# pays no context or shader set-up after the first call.
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_local = threading.local()


def _render_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardkit-render")
        return _POOL


def _thread_renderer(config: Any) -> Any:
    from rewardkit.render import Renderer

    cache = getattr(_local, "renderers", None)
    if cache is None:
        cache = _local.renderers = {}
    key = repr(config)
    r = cache.get(key)
    if r is None:
        r = cache[key] = Renderer(size=64, config=config)
    return r


def close_renderers() -> None:
    """Release the render thread's OpenGL contexts (they are otherwise kept for the next call)."""
    def _close() -> None:
        for r in (getattr(_local, "renderers", None) or {}).values():
            r.close()
        _local.renderers = {}

    with _POOL_LOCK:
        pool = _POOL
    if pool is not None:
        pool.submit(_close).result()


def _render_one(index: int, mesh: MeshLike, prompt: str, groups: list[_RenderGroup], up: str,
                renderer: Any = None, limits: Any = None) -> _Item:
    """Load and render one mesh once per render group (runs in the render thread unless a renderer is given)."""
    item = _Item(index, _mesh_name(mesh, index), prompt)
    try:
        t0 = time.perf_counter()
        loaded = _load(mesh, up, limits)
        item.load_s = time.perf_counter() - t0
        item.warnings = list(getattr(loaded, "warnings", []) or [])
        for gi, g in enumerate(groups):
            r = renderer if renderer is not None else _thread_renderer(g.render_config)
            t0 = time.perf_counter()
            out = r.render(loaded, g.protocol, modes=g.modes)
            item.views[gi] = {m: views_to_tensor(out[m]) for m in g.modes}
            item.render_s += time.perf_counter() - t0
    except Exception as exc:  # one bad mesh must not stop the others
        item.error = _describe_error(exc)
        item.views = {}
    return item


def _score_batch(batch: list[_Item], scorers: ScorerSet, groups: list[_RenderGroup], per_view: bool,
                 timings: ScoringTimings, results: list[MeshScore]) -> None:
    group_of = {name: gi for gi, g in enumerate(groups) for name in g.names}
    t0 = time.perf_counter()
    for name, scorer in scorers.items():
        gi = group_of[name]
        views = {m: torch.stack([it.views[gi][m] for it in batch]) for m in scorer.modes}
        out: ScoreOutput = scorer.score_views(views, [it.prompt for it in batch], per_view=per_view)
        timings.n_forwards += 1
        scores = out.scores.detach().float().cpu().tolist()
        pv = out.per_view.detach().float().cpu().tolist() if (per_view and out.per_view is not None) else None
        for j, it in enumerate(batch):
            r = results[it.index]
            r.scores[name] = float(scores[j])
            if pv is not None:
                r.per_view[name] = [float(x) for x in pv[j]]
    timings.forward += time.perf_counter() - t0


def score_meshes(
    meshes: Sequence[MeshLike] | MeshLike,
    prompts: Sequence[str] | str,
    scorers: Any,
    *,
    batch_size: int = 8,
    per_view: bool = False,
    render_size: int | None = None,
    device: str | torch.device | None = None,
    up: str = "+y",
    prefetch: bool = True,
    on_error: str = "record",
    timings: ScoringTimings | None = None,
    progress: Callable[[int, int], None] | None = None,
    limits: Any = None,
) -> list[MeshScore]:
    """Score meshes (paths, trimesh objects or loaded meshes) against their prompts with every scorer.

    ``prompts``: one string for all meshes or one per mesh. ``scorers``: a :class:`ScorerSet`, a scorer,
    a list/dict of them, or scorer directories. ``render_size`` overrides the scorers' recorded render
    resolution (the models resize internally; use the recorded size to reproduce training conditions).
    ``on_error``: ``"record"`` (default) or ``"raise"``. Pass a :class:`ScoringTimings` to get a breakdown.
    ``progress(done, total)`` is called as meshes finish (scored or failed).
    ``limits``: a :class:`rewardkit.io.MeshLimits` for reading mesh files (default: from the environment).
    """
    import trimesh

    if isinstance(meshes, (str, os.PathLike, trimesh.Trimesh, trimesh.Scene)) or hasattr(meshes, "scene"):
        meshes = [meshes]
    meshes = list(meshes)
    if isinstance(prompts, str):
        prompts = [prompts] * len(meshes)
    prompts = list(prompts)
    if len(prompts) != len(meshes):
        raise ValueError(f"{len(prompts)} prompts for {len(meshes)} meshes")
    if on_error not in ("record", "raise"):
        raise ValueError("on_error must be 'record' or 'raise'")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    scorer_set = as_scorer_set(scorers, device=device)
    groups = render_groups(scorer_set, render_size)
    timings = timings if timings is not None else ScoringTimings()
    t_start = time.perf_counter()
    results = [MeshScore(mesh=_mesh_name(m, i), prompt=p) for i, (m, p) in enumerate(zip(meshes, prompts))]

    pool = _render_pool()
    window = 2 * batch_size if prefetch else 1
    todo = iter(enumerate(zip(meshes, prompts)))
    pending: deque[Future] = deque()

    def submit_more() -> None:
        while len(pending) < window:
            nxt = next(todo, None)
            if nxt is None:
                return
            i, (m, p) = nxt
            pending.append(pool.submit(_render_one, i, m, p, groups, up, None, limits))

    submit_more()
    batch: list[_Item] = []
    done = 0

    def finished(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and n:
            progress(done, len(meshes))

    while pending:
        item = pending.popleft().result()
        if prefetch:
            submit_more()  # keep the render thread busy while this batch is scored
        timings.load += item.load_s
        timings.render += item.render_s
        results[item.index].warnings = item.warnings
        if item.error is not None:
            if on_error == "raise":
                raise RuntimeError(f"{item.name}: {item.error}")
            results[item.index].error = item.error
            finished(1)
            continue
        batch.append(item)
        if len(batch) >= batch_size:
            _score_batch(batch, scorer_set, groups, per_view, timings, results)
            finished(len(batch))
            batch = []
        if not prefetch:
            submit_more()
    if batch:
        _score_batch(batch, scorer_set, groups, per_view, timings, results)
        finished(len(batch))
    timings.total += time.perf_counter() - t_start
    timings.n_meshes += len(meshes)
    return results


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
    groups = render_groups(scorer_set, render_size)
    if len(groups) != 1:
        raise ValueError("these scorers use different camera protocols or render configs; render per scorer")
    if renderer is not None:
        item = _render_one(0, mesh, "", groups, up, renderer)
    else:
        item = _render_pool().submit(_render_one, 0, mesh, "", groups, up).result()
    if item.error:
        raise RuntimeError(f"{item.name}: {item.error}")
    return item.views[0]


__all__ = ["MeshScore", "ScoringTimings", "as_scorer_set", "close_renderers", "render_groups", "render_views",
           "score_meshes", "score_views", "views_to_tensor"]
