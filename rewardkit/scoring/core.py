"""The scoring core: render a mesh the way scorers expect, and score stacked views with one forward per scorer.

Everything that scores goes through here: :func:`rewardkit.scoring.score_meshes` (the Python API, the CLI and
the RL adapters' in-process backend), ``BaseScorer.score_meshes`` / ``ScorerSet.score_meshes``, and the HTTP
service (:mod:`rewardkit.scoring.service` renders uploads with :func:`render_mesh` and scores its
micro-batches with :func:`score_samples`).

- :func:`render_groups`: scorers that share a camera protocol and render config share one render pass;
- :func:`render_mesh`: one loaded mesh -> ``{group: {mode: uint8 [V, 3, H, W]}}``, one render per group;
- :func:`score_samples`: per-sample view dicts of one scorer -> one forward -> plain float lists
  (:func:`score_samples_std` adds an ensemble's std);
- :func:`encode_prompts`: a batch's text features with each distinct prompt encoded once;
- :func:`score_meshes`: the batched, prefetching loop over meshes (load + render in one long-lived render
  thread while the models score the previous batch).

This module works on anything shaped like a :class:`~rewardkit.scoring.ScorerSet` (``items()``, scorers with
``modes``, ``camera``, ``render_config`` and ``score_views``) and imports no other scoring module but the
on-disk format helpers, so the scorer classes can use it without an import cycle.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from rewardkit.scoring.format import render_config_object

MeshLike = Any  # str | PathLike | trimesh.Trimesh | trimesh.Scene | rewardkit.io.LoadedMesh


@dataclass
class MeshScore:
    """The scores of one mesh: ``scores[name]`` per scorer (``global``, ``local``, ...), ``std[name]`` for the
    scorers that report an uncertainty (ensembles: the std of their members), ``per_view[name]`` when asked
    for, ``error`` when the mesh could not be scored."""

    mesh: str
    prompt: str
    scores: dict[str, float] = field(default_factory=dict)
    per_view: dict[str, list[float]] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.per_view:
            d.pop("per_view")
        if not self.std:
            d.pop("std")
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


# ---------------------------------------------------------------------------------------------------- #
# render groups: scorers that share a camera protocol and render config share one render pass
# ---------------------------------------------------------------------------------------------------- #
@dataclass
class RenderGroup:
    """Scorers (``names``) rendered together: one camera protocol, one render config, the union of their modes."""

    protocol: Any
    render_config: Any
    modes: list[str]
    names: list[str]


def render_groups(scorers: Any, render_size: int | None = None) -> list[RenderGroup]:
    """Group a scorer set's scorers by (camera protocol, render config); ``render_size`` overrides the size."""
    groups: dict[str, RenderGroup] = {}
    for name, s in scorers.items():
        proto = s.camera.with_size(render_size) if render_size else s.camera
        key = json.dumps([proto.to_dict(), s.render_config], sort_keys=True)
        g = groups.get(key)
        if g is None:
            g = groups[key] = RenderGroup(proto, render_config_object(s.render_config), [], [])
        g.names.append(name)
        for m in s.modes:
            if m not in g.modes:
                g.modes.append(m)
    return list(groups.values())


def views_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """[H, W, 3] uint8 images -> uint8 tensor [V, 3, H, W]."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class RendererCache:
    """One :class:`rewardkit.render.Renderer` (an OpenGL context and its compiled shaders) per render config,
    created on first use and reused. Use it from one thread only (OpenGL contexts are per thread)."""

    def __init__(self) -> None:
        self._renderers: dict[str, Any] = {}

    def get(self, group: RenderGroup) -> Any:
        from rewardkit.render import Renderer

        key = repr(group.render_config)
        r = self._renderers.get(key)
        if r is None:
            r = self._renderers[key] = Renderer(size=group.protocol.size, config=group.render_config)
        return r

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


def render_mesh(loaded: Any, groups: Sequence[RenderGroup], renderers: RendererCache | Any
                ) -> dict[int, dict[str, torch.Tensor]]:
    """Render one loaded mesh once per render group: ``{group index: {mode: uint8 [V, 3, H, W]}}``.
    ``renderers``: a :class:`RendererCache`, or one renderer used for every group."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for gi, g in enumerate(groups):
        r = renderers.get(g) if isinstance(renderers, RendererCache) else renderers
        images = r.render(loaded, g.protocol, modes=g.modes)
        out[gi] = {m: views_to_tensor(images[m]) for m in g.modes}
    return out


def score_samples(scorer: Any, samples: Sequence[dict[str, torch.Tensor]], prompts: Sequence[str],
                  per_view: bool) -> tuple[list[float], list[list[float]] | None]:
    """One forward of ``scorer`` over samples (each ``{mode: [V, 3, H, W]}``, equal shapes): the scores and,
    when ``per_view`` and the scorer has them, each sample's per-view scores, as plain floats."""
    scores, pv, _ = score_samples_std(scorer, samples, prompts, per_view)
    return scores, pv


def score_samples_std(scorer: Any, samples: Sequence[dict[str, torch.Tensor]], prompts: Sequence[str],
                      per_view: bool) -> tuple[list[float], list[list[float]] | None, list[float] | None]:
    """:func:`score_samples` plus each sample's std where the scorer reports one (ensembles), else None."""
    views = {m: torch.stack([s[m] for s in samples]) for m in scorer.modes}
    out = scorer.score_views(views, list(prompts), per_view=per_view)
    scores = [float(x) for x in out.scores.detach().float().cpu().tolist()]
    pv = None
    if per_view and out.per_view is not None:
        pv = [[float(x) for x in row] for row in out.per_view.detach().float().cpu().tolist()]
    std = None
    if getattr(out, "std", None) is not None:
        std = [float(x) for x in out.std.detach().float().cpu().tolist()]
    return scores, pv, std


def encode_prompts(encode_text: Callable[[list[str]], torch.Tensor], prompts: Sequence[str]) -> torch.Tensor:
    """``encode_text`` over each distinct prompt once (RL batches hold G samples per prompt), indexed back to
    one row per prompt, in order: [len(prompts), D]."""
    unique = list(dict.fromkeys(prompts))
    feats = encode_text(unique)
    row = {p: i for i, p in enumerate(unique)}
    return feats[torch.tensor([row[p] for p in prompts], device=feats.device)]


# ---------------------------------------------------------------------------------------------------- #
# loading meshes
# ---------------------------------------------------------------------------------------------------- #
def mesh_name(mesh: MeshLike, i: int) -> str:
    """The name a mesh is reported under: its path, or ``<mesh i>``."""
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


def render_pool() -> ThreadPoolExecutor:
    """The process-wide render thread."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardkit-render")
        return _POOL


def _thread_renderers() -> RendererCache:
    cache = getattr(_local, "renderers", None)
    if cache is None:
        cache = _local.renderers = RendererCache()
    return cache


def close_renderers() -> None:
    """Release the render thread's OpenGL contexts (they are otherwise kept for the next call)."""
    def _close() -> None:
        cache = getattr(_local, "renderers", None)
        if cache is not None:
            cache.close()

    with _POOL_LOCK:
        pool = _POOL
    if pool is not None:
        pool.submit(_close).result()


def render_item(index: int, mesh: MeshLike, prompt: str, groups: list[RenderGroup], up: str,
                renderer: Any = None, limits: Any = None) -> _Item:
    """Load and render one mesh once per render group (runs in the render thread unless a renderer is given);
    a failure is recorded on the item, never raised."""
    item = _Item(index, mesh_name(mesh, index), prompt)
    try:
        t0 = time.perf_counter()
        loaded = _load(mesh, up, limits)
        item.load_s = time.perf_counter() - t0
        item.warnings = list(getattr(loaded, "warnings", []) or [])
        t0 = time.perf_counter()
        item.views = render_mesh(loaded, groups, renderer if renderer is not None else _thread_renderers())
        item.render_s += time.perf_counter() - t0
    except Exception as exc:  # one bad mesh must not stop the others
        item.error = _describe_error(exc)
        item.views = {}
    return item


def _score_batch(batch: list[_Item], scorers: Any, groups: list[RenderGroup], per_view: bool,
                 timings: ScoringTimings, results: list[MeshScore]) -> None:
    group_of = {name: gi for gi, g in enumerate(groups) for name in g.names}
    t0 = time.perf_counter()
    for name, scorer in scorers.items():
        gi = group_of[name]
        scores, pv, std = score_samples_std(scorer, [it.views[gi] for it in batch], [it.prompt for it in batch],
                                            per_view)
        timings.n_forwards += 1
        for j, it in enumerate(batch):
            r = results[it.index]
            r.scores[name] = scores[j]
            if std is not None:
                r.std[name] = std[j]
            if pv is not None:
                r.per_view[name] = pv[j]
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
    """Score meshes (paths, trimesh objects or loaded meshes) against their prompts with every scorer of the
    :class:`~rewardkit.scoring.ScorerSet` ``scorers`` (moved to ``device`` when given;
    :func:`rewardkit.scoring.score_meshes` takes any scorers and calls this).

    ``prompts``: one string for all meshes or one per mesh. ``render_size`` overrides the scorers' recorded
    render resolution (the models resize internally; use the recorded size to reproduce training conditions).
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
    if device is not None:
        scorers.to(device)
    groups = render_groups(scorers, render_size)
    timings = timings if timings is not None else ScoringTimings()
    t_start = time.perf_counter()
    results = [MeshScore(mesh=mesh_name(m, i), prompt=p) for i, (m, p) in enumerate(zip(meshes, prompts))]

    pool = render_pool()
    window = 2 * batch_size if prefetch else 1
    todo = iter(enumerate(zip(meshes, prompts)))
    pending: deque[Future] = deque()

    def submit_more() -> None:
        while len(pending) < window:
            nxt = next(todo, None)
            if nxt is None:
                return
            i, (m, p) = nxt
            pending.append(pool.submit(render_item, i, m, p, groups, up, None, limits))

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
            _score_batch(batch, scorers, groups, per_view, timings, results)
            finished(len(batch))
            batch = []
        if not prefetch:
            submit_more()
    if batch:
        _score_batch(batch, scorers, groups, per_view, timings, results)
        finished(len(batch))
    timings.total += time.perf_counter() - t_start
    timings.n_meshes += len(meshes)
    return results


__all__ = ["MeshScore", "RenderGroup", "RendererCache", "ScoringTimings", "close_renderers", "encode_prompts",
           "mesh_name", "render_groups", "render_item", "render_mesh", "render_pool", "score_meshes", "score_samples",
           "score_samples_std", "views_to_tensor"]
