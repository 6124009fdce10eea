"""The local engine: this machine, the way ``rewardkit render`` / ``score`` always ran.

Rendering goes through :func:`rewardkit.render.render_batch` (``workers`` processes, each with its own
OpenGL context), scoring through :func:`rewardkit.scoring.score_meshes` in this process, both over the
manifest's items in chunks so progress and the results table advance as items finish.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rewardkit.engines.jobs import Record, RenderJob, ScoreJob, ScoreWorker, render_record
from rewardkit.engines.manifest import Item


@dataclass
class LocalEngine:
    """``workers``: render processes; ``chunk``: items per call of the batch renderer / scorer;
    ``scorer_set``: an already loaded :class:`~rewardkit.scoring.ScorerSet` to score with (default: the
    job's scorers, loaded on first use)."""

    workers: int = 1
    chunk: int = 32
    scorer_set: Any = None
    name: str = "local"

    def render(self, job: RenderJob, items: Sequence[Item]) -> Iterator[Record]:
        from rewardkit.render.batch import render_batch
        from rewardkit.render.folder import RenderResult

        step = max(self.chunk, 8 * self.workers)
        for start in range(0, len(items), step):
            part = items[start:start + step]
            summary = render_batch([it.mesh for it in part], job.out_root, job.protocol, job.modes,
                                   workers=self.workers, up=job.up, config=job.config,
                                   names=[it.id for it in part], progress=False, limits=job.limits)
            failed = {f["mesh_path"]: f["error"] for f in summary.failed}  # the paths as given
            rendered = iter(summary.rendered)  # in item order, like the failures
            for it in part:
                if it.mesh in failed:
                    yield render_record(it, None, failed[it.mesh], None, 0.0)
                else:
                    yield render_record(it, RenderResult(**next(rendered)), None, None, 0.0)

    def score(self, job: ScoreJob, items: Sequence[Item]) -> Iterator[Record]:
        worker = ScoreWorker(job, self.scorer_set)
        for start in range(0, len(items), self.chunk):
            yield from worker(items[start:start + self.chunk])


__all__ = ["LocalEngine"]
