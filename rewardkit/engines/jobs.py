"""The work of one batch, the same on every engine: what to render or score, the per-item step, the outputs.

- :class:`RenderJob` / :class:`ScoreJob`: what a batch does (picklable: they travel to Ray actors);
- :class:`RenderWorker` / :class:`ScoreWorker`: do a job on a list of items and return one record (a
  plain dict) per item. A render worker creates its OpenGL context lazily, in the thread that renders
  (Ray Data runs a callable class's ``__init__`` and ``__call__`` on different threads, and an EGL
  context is bound to the thread that made it); a score worker holds one loaded ``ScorerSet``;
- :func:`render_manifest` / :func:`score_manifest`: read a manifest, skip the items a previous run
  finished, hand the rest to an engine, show progress, and write the outputs the local engine writes:
  render folders plus ``summary.json`` (render), a results table (score, JSON lines, one row per item).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rewardkit.engines.manifest import Item, read_manifest
from rewardkit.errors import RewardkitError
from rewardkit.io import MeshLimits
from rewardkit.render.batch import SUMMARY_FILE, render_one
from rewardkit.render.folder import is_rendered
from rewardkit.render.protocol import CameraProtocol, get_protocol
from rewardkit.render.renderer import RenderConfig

Record = dict[str, Any]


class EngineError(RewardkitError, RuntimeError):
    """An engine cannot run (Ray not reachable at the address, a bad results file, ...)."""


class Engine(Protocol):
    """Runs a job's worker over items and yields one record per item as items finish (any order)."""

    name: str

    def render(self, job: RenderJob, items: Sequence[Item]) -> Iterator[Record]: ...

    def score(self, job: ScoreJob, items: Sequence[Item]) -> Iterator[Record]: ...


# ---------------------------------------------------------------------------------------------------- #
# render
# ---------------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class RenderJob:
    """Render every item into ``out_root/<item id>/`` with one camera protocol, modes and render config."""

    out_root: str
    protocol: CameraProtocol
    modes: tuple[str, ...]
    config: RenderConfig = field(default_factory=RenderConfig)
    up: str = "+y"
    limits: MeshLimits = field(default_factory=MeshLimits.from_env)

    def out_dir(self, item: Item) -> str:
        return str(Path(self.out_root) / item.id)

    def done(self, item: Item) -> bool:
        """Whether a previous run left a complete render folder of this job for ``item``."""
        return is_rendered(self.out_dir(item), self.protocol, self.modes, self.config.to_dict())


def _node_id() -> str | None:
    """The Ray node this runs on (None outside Ray)."""
    import sys

    if "ray" not in sys.modules:
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class RenderWorker:
    """Renders items for one :class:`RenderJob`; one renderer and mesh loader per thread that calls it,
    created on that thread's first call (see the module docstring)."""

    def __init__(self, job: RenderJob) -> None:
        self.job = job
        self._local = threading.local()

    def _tools(self):
        tools = getattr(self._local, "tools", None)
        if tools is None:
            from rewardkit.io import IsolatedLoader
            from rewardkit.render.renderer import Renderer

            tools = self._local.tools = (Renderer(size=self.job.protocol.size, config=self.job.config),
                                         IsolatedLoader(self.job.limits))
        return tools

    def __call__(self, items: Sequence[Item]) -> list[Record]:
        node = _node_id()
        try:
            renderer, loader = self._tools()
        except Exception as exc:  # no GL context: every item fails with the reason, the run goes on
            return [render_record(it, None, f"{type(exc).__name__}: {exc}", node, 0.0) for it in items]
        out = []
        for it in items:
            t0 = time.perf_counter()
            result, error = render_one(renderer, loader, it.mesh, self.job.out_dir(it), self.job.protocol,
                                       self.job.modes, self.job.up)
            out.append(render_record(it, result, error, node, time.perf_counter() - t0))
        return out

    def close(self) -> None:
        tools = getattr(self._local, "tools", None)
        if tools is not None:
            tools[0].close()
            tools[1].close()
            self._local.tools = None


def render_record(item: Item, result: Any, error: str | None, node: str | None, seconds: float) -> Record:
    """One item's line of a render summary (``status``: rendered | failed | skipped)."""
    rec: Record = {"id": item.id, "row": item.row, "mesh_path": item.mesh}
    if result is not None:
        rec.update(status="rendered", **{k: v for k, v in asdict(result).items() if k != "mesh_path"})
    else:
        rec.update(status="failed", error=error)
    rec.update(node_id=node, seconds=round(seconds, 4))
    return rec


@dataclass
class ManifestRun:
    """What a manifest run did: counts, the records of the items it rendered/scored or that failed, and
    the ids it skipped because an earlier run had finished them."""

    engine: str
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    records: list[Record] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def nodes(self) -> dict[str, int]:
        """Items per Ray node id (empty for the local engine)."""
        out: dict[str, int] = {}
        for r in self.records:
            if r.get("node_id"):
                out[r["node_id"]] = out.get(r["node_id"], 0) + 1
        return out


def _progress(label: str, enabled: bool):
    from rewardkit.progress import progress_bar

    return progress_bar(label, disable=not enabled)


def _split(items: Iterable[Item], done: Callable[[Item], bool], run: ManifestRun,
           failed: Callable[[Item], Record]) -> list[Item]:
    pending = []
    for it in items:
        run.total += 1
        if it.error is not None:
            run.records.append(failed(it))
            run.failed += 1
        elif done(it):
            run.skipped += 1
            run.skipped_ids.append(it.id)
        else:
            pending.append(it)
    return pending


def render_manifest(manifest: str | Path, out_root: str | Path, engine: Engine, *,
                    protocol: str | CameraProtocol = "orbit6", modes: Sequence[str] = ("rgb", "geometry", "normal"),
                    size: int | None = None, up: str = "+y", config: RenderConfig | None = None,
                    limits: MeshLimits | None = None, progress: bool = True) -> ManifestRun:
    """Render every item of ``manifest`` into ``out_root/<id>/`` on ``engine``; items whose render folder
    a previous run completed (same protocol, modes, render config) are skipped. Writes
    ``out_root/summary.json`` (the render summary of :func:`rewardkit.render.render_batch` plus ids,
    node ids and the skipped ids) and returns the :class:`ManifestRun`."""
    job = RenderJob(str(out_root), get_protocol(protocol, size=size), tuple(modes), config or RenderConfig(), up,
                    limits or MeshLimits.from_env())
    Path(out_root).mkdir(parents=True, exist_ok=True)
    run = ManifestRun(engine=engine.name)
    t0 = time.perf_counter()
    pending: list[Item] = []
    meshes: dict[str, str] = {}
    for chunk in read_manifest(manifest, need_prompt=False):
        for it in _split(chunk, job.done, run, lambda it: render_record(it, None, it.error, None, 0.0)):
            first = meshes.setdefault(it.mesh, it.id)
            if first != it.id:  # one mesh, two ids: render it once
                run.records.append(render_record(it, None, f"row {it.row}: the same mesh as id {first!r}", None, 0.0))
                run.failed += 1
            else:
                pending.append(it)
    bar = _progress("render", progress)
    with bar:
        task = bar.add_task("", total=len(pending))
        for rec in engine.render(job, pending):
            run.records.append(rec)
            run.done += rec["status"] == "rendered"
            run.failed += rec["status"] == "failed"
            bar.update(task, advance=1, description=Path(rec["mesh_path"]).name)
    run.seconds = time.perf_counter() - t0
    run.records.sort(key=lambda r: r["row"])
    summary = {
        "protocol": job.protocol.to_dict(), "modes": list(job.modes), "engine": run.engine,
        "rendered": [r for r in run.records if r["status"] == "rendered"],
        "failed": [r for r in run.records if r["status"] == "failed"],
        "skipped": run.skipped_ids,
    }
    (Path(out_root) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return run


# ---------------------------------------------------------------------------------------------------- #
# score
# ---------------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ScoreJob:
    """Score every item against its prompt with the scorers at ``scorers`` (directories or Hub ids)."""

    scorers: tuple[str, ...]
    device: str = "auto"
    batch_size: int = 8
    render_size: int | None = None
    up: str = "+y"
    limits: MeshLimits = field(default_factory=MeshLimits.from_env)


class ScoreWorker:
    """Scores items for one :class:`ScoreJob` with one :class:`~rewardkit.scoring.ScorerSet`, loaded once.
    Rendering runs in the scoring core's render thread, which creates its OpenGL context itself."""

    def __init__(self, job: ScoreJob, scorer_set: Any = None) -> None:
        self.job = job
        self._scorers = scorer_set

    @property
    def scorers(self) -> Any:
        if self._scorers is None:
            from rewardkit.devices import resolve_device
            from rewardkit.scoring.api import as_scorer_set

            self._scorers = as_scorer_set(list(self.job.scorers), device=resolve_device(self.job.device))
        return self._scorers

    def __call__(self, items: Sequence[Item]) -> list[Record]:
        from rewardkit.scoring.api import score_meshes

        node = _node_id()
        try:
            scorers = self.scorers
        except Exception as exc:  # a scorer that cannot be loaded here: every item fails with the reason
            return [score_record(it, None, node, f"cannot load the scorers: {type(exc).__name__}: {exc}")
                    for it in items]
        results = score_meshes([it.mesh for it in items], [it.prompt for it in items], scorers,
                               batch_size=self.job.batch_size, render_size=self.job.render_size, up=self.job.up,
                               limits=self.job.limits)
        return [score_record(it, r.to_dict(), node) for it, r in zip(items, results)]


def score_record(item: Item, result: Record | None, node: str | None, error: str | None = None) -> Record:
    """One row of the results table: ``id``, ``row``, ``mesh``, ``prompt``, ``scores`` (and ``std``),
    ``error``, ``warnings``, ``node_id``."""
    rec: Record = {"id": item.id, "row": item.row}
    rec.update(result or {"mesh": item.mesh, "prompt": item.prompt, "scores": {}, "error": error, "warnings": []})
    rec["node_id"] = node
    return rec


def read_results(path: str | Path) -> dict[str, Record]:
    """A results table (JSON lines) -> the last record per id."""
    path = Path(path)
    out: dict[str, Record] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[str(rec["id"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                if n > 1 and not line.endswith("\n"):  # a line cut off by an interrupted run: ignore it
                    continue
                raise EngineError(f"{path}: line {n} is not a results record") from None
    return out


def score_manifest(manifest: str | Path, results_path: str | Path, engine: Engine, job: ScoreJob, *,
                   progress: bool = True) -> ManifestRun:
    """Score every item of ``manifest`` on ``engine`` into ``results_path`` (JSON lines, one record per item,
    :func:`score_record`). Items with a record without an error from a previous run are skipped; records
    are appended as items finish (an interrupted run keeps what it scored), and the file is rewritten at
    the end with one record per id, in manifest order."""
    results_path = Path(results_path)
    if results_path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise EngineError(f"{results_path}: the results table is JSON lines; name it *.jsonl")
    previous = read_results(results_path)
    run = ManifestRun(engine=engine.name)
    t0 = time.perf_counter()
    pending: list[Item] = []
    order: list[str] = []
    for chunk in read_manifest(manifest, need_prompt=True):
        order += [it.id for it in chunk]
        pending += _split(chunk, lambda it: it.id in previous and previous[it.id].get("error") is None, run,
                          lambda it: score_record(it, None, None, it.error))
    results_path.parent.mkdir(parents=True, exist_ok=True)
    bar = _progress("score", progress)
    with bar, open(results_path, "a", encoding="utf-8") as fh:
        for rec in run.records:  # the rows that broke a rule
            fh.write(json.dumps(rec) + "\n")
        task = bar.add_task("", total=len(pending))
        for rec in engine.score(job, pending):
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            run.records.append(rec)
            run.done += rec.get("error") is None
            run.failed += rec.get("error") is not None
            bar.update(task, advance=1)
    run.seconds = time.perf_counter() - t0
    final = read_results(results_path)
    tmp = results_path.with_name(results_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for item_id in dict.fromkeys(order):
            if item_id in final:
                fh.write(json.dumps(final[item_id]) + "\n")
    os.replace(tmp, results_path)
    rows = {item_id: n for n, item_id in enumerate(order)}
    run.records.sort(key=lambda r: rows.get(r["id"], len(rows)))
    return run


__all__ = ["Engine", "EngineError", "ManifestRun", "RenderJob", "RenderWorker", "ScoreJob", "ScoreWorker",
           "read_results", "render_manifest", "render_record", "score_manifest", "score_record"]
