"""Rendering many meshes: one renderer per worker process, progress, and failures that stop nothing.

A mesh that fails to load or render is recorded with its reason in the batch summary; the others are
rendered anyway. ``summary.json`` in the output root lists both, and is written even when the batch is
interrupted (the meshes not reached are listed as failed). Meshes are loaded in an
:class:`~rewardkit.io.IsolatedLoader` (per-mesh time limit and memory cap, :class:`~rewardkit.io.MeshLimits`),
so a mesh that would hang or exhaust memory fails alone.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from rewardkit.io import IsolatedLoader, MeshError, MeshLimits
from rewardkit.render.folder import RenderResult, render_to_dir, write_views
from rewardkit.render.protocol import CameraProtocol, get_protocol
from rewardkit.render.renderer import RenderConfig, Renderer

SUMMARY_FILE = "summary.json"


@dataclass
class BatchSummary:
    """What ``render_batch`` did: the protocol and modes, one entry per rendered mesh and per failure."""
    protocol: dict
    modes: list[str]
    rendered: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    render_seconds: float = 0.0
    """Time spent inside pyrender's render calls, summed over workers (not written to summary.json)."""

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return asdict(self)


def output_names(mesh_paths: Sequence[str | Path]) -> list[str]:
    """A folder name per mesh: its file stem, made unique (deterministically) where stems collide."""
    stems = [Path(p).stem for p in mesh_paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names = []
    for p, s in zip(mesh_paths, stems):
        if counts[s] > 1:
            s = f"{s}-{hashlib.sha256(str(Path(p)).encode()).hexdigest()[:8]}"
        names.append(s)
    return names


# one renderer per worker process, created lazily by the worker itself
_worker_renderer: Renderer | None = None
_worker_loader: IsolatedLoader | None = None


def _worker_init(size: int, config: RenderConfig, limits: MeshLimits) -> None:
    global _worker_renderer, _worker_loader
    _worker_renderer = Renderer(size=size, config=config)
    _worker_loader = IsolatedLoader(limits)


def render_one(renderer: Renderer, loader: IsolatedLoader, mesh_path: str, out_dir: str, protocol: CameraProtocol,
               modes: Sequence[str], up: str = "+y") -> tuple[RenderResult | None, str | None]:
    """Load one mesh with ``loader``, render it with ``renderer`` and write its render folder: ``(result,
    None)``, or ``(None, reason)`` when it fails (never raises for a bad mesh). The one per-mesh step of
    every batch renderer (the worker processes here, the Ray Data actors of :mod:`rewardkit.engines`)."""
    try:
        loaded = loader.load(mesh_path, up=up)
        return render_to_dir(loaded, out_dir, protocol, modes, renderer=renderer, up=up), None
    except MeshError as exc:
        return None, exc.reason
    except Exception as exc:  # one broken mesh must not stop the batch
        return None, f"{type(exc).__name__}: {exc}"


def _render_one(job: tuple[str, str, CameraProtocol, tuple[str, ...], str]) -> tuple[str, RenderResult | None, str | None, float]:
    mesh_path, out_dir, protocol, modes, up = job
    before = _worker_renderer.render_seconds
    result, error = render_one(_worker_renderer, _worker_loader, mesh_path, out_dir, protocol, modes, up)
    return mesh_path, result, error, _worker_renderer.render_seconds - before


def _write(views, out_dir: str, loaded, protocol: CameraProtocol, render_config: dict) -> RenderResult:
    write_views(views, out_dir, mesh=loaded, protocol=protocol, render_config=render_config)
    return RenderResult(
        mesh_path=loaded.path, render_dir=out_dir, mesh_sha256=loaded.sha256, n_views=protocol.n_views,
        modes=list(views), warnings=list(loaded.warnings),
    )


def render_batch(
    mesh_paths: Iterable[str | Path],
    out_root: str | Path,
    protocol: "str | CameraProtocol" = "orbit6",
    modes: Sequence[str] = ("rgb", "geometry", "normal"),
    *,
    size: int | None = None,
    workers: int = 1,
    up: str = "+y",
    config: RenderConfig | None = None,
    names: Sequence[str] | None = None,
    progress: bool = True,
    limits: MeshLimits | None = None,
) -> BatchSummary:
    """Render each mesh into ``out_root/<name>/``; write and return the batch summary.

    ``names`` overrides the folder names (default: file stems, de-duplicated). ``workers > 1`` renders
    in that many processes, each with its own OpenGL context. ``limits``: what reading one mesh may cost
    (default :meth:`MeshLimits.from_env`).
    """
    limits = limits or MeshLimits.from_env()
    mesh_paths = [str(p) for p in mesh_paths]
    protocol = get_protocol(protocol, size=size)
    config = config or RenderConfig()
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else output_names(mesh_paths)
    if len(names) != len(mesh_paths):
        raise ValueError("names must have one entry per mesh")
    jobs = [(p, str(out_root / n), protocol, tuple(modes), up) for p, n in zip(mesh_paths, names)]
    summary = BatchSummary(protocol=protocol.to_dict(), modes=list(modes))
    results: dict[str, tuple[RenderResult | None, str | None]] = {}

    from rewardkit.progress import progress_bar

    try:
        with progress_bar("render", disable=not progress) as bar:  # stderr: a bar on a terminal, else lines
            task = bar.add_task("", total=len(jobs))
            if workers <= 1:
                _render_serial(jobs, protocol, config, limits, results, summary, lambda name: bar.update(
                    task, advance=1, description=name))
            else:
                ctx = mp.get_context("spawn")  # a forked GL context is not safe to reuse
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                         initargs=(protocol.size, config, limits)) as pool:
                    for path, result, error, seconds in pool.map(_render_one, jobs):
                        results[path] = (result, error)
                        summary.render_seconds += seconds
                        bar.update(task, advance=1, description=Path(path).name)
    except BaseException as exc:  # the summary is written even when the batch stops early
        for path, *_ in jobs:
            results.setdefault(path, (None, f"not rendered: the batch stopped ({type(exc).__name__}: {exc})"))
        _write_summary(summary, jobs, results, out_root)
        raise
    _write_summary(summary, jobs, results, out_root)
    return summary


def _render_serial(jobs, protocol: CameraProtocol, config: RenderConfig, limits: MeshLimits, results: dict,
                   summary: BatchSummary, advance) -> None:
    """One process: render mesh i+1 while mesh i's PNGs are written in a background thread."""
    with Renderer(size=protocol.size, config=config) as renderer, ThreadPoolExecutor(1) as writer, \
            IsolatedLoader(limits) as loader:
        pending: tuple[str, Future] | None = None

        def finish(item: tuple[str, Future]) -> None:
            path, future = item
            try:
                results[path] = (future.result(), None)
            except Exception as exc:
                results[path] = (None, f"{type(exc).__name__}: {exc}")
            advance(Path(path).name)

        try:
            for mesh_path, out_dir, proto, job_modes, job_up in jobs:
                try:
                    loaded = loader.load(mesh_path, up=job_up)
                    views = renderer.render(loaded, proto, job_modes)
                except Exception as exc:  # one broken mesh must not stop the batch
                    results[mesh_path] = (None, exc.reason if isinstance(exc, MeshError) else f"{type(exc).__name__}: {exc}")
                    advance(Path(mesh_path).name)
                    continue
                if pending is not None:
                    finish(pending)
                pending = (mesh_path, writer.submit(_write, views, out_dir, loaded, proto, renderer.config.to_dict()))
        finally:
            if pending is not None:
                finish(pending)
            summary.render_seconds = renderer.render_seconds


def _write_summary(summary: BatchSummary, jobs, results: dict, out_root: Path) -> None:
    summary.rendered, summary.failed = [], []
    for path, *_ in jobs:
        result, error = results[path]
        if result is not None:
            summary.rendered.append(asdict(result))
        else:
            summary.failed.append({"mesh_path": path, "error": error})
    # no timings on disk: the folder is a DVC output, and the same meshes must hash the same on every run
    on_disk = {k: v for k, v in summary.to_dict().items() if k != "render_seconds"}
    (out_root / SUMMARY_FILE).write_text(json.dumps(on_disk, indent=2) + "\n")
