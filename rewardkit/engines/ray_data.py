"""The Ray engine: render and score a manifest's items on a Ray cluster with Ray Data (``pip install 'rewardkit[ray]'``).

Items go through ``Dataset.map_batches`` with a callable class, in a fixed pool of ``actors`` actors
(``ActorPoolStrategy``): each actor holds one :class:`~rewardkit.engines.jobs.RenderWorker` (one OpenGL
context per rendering thread, created in that thread on its first batch: Ray Data runs ``__init__`` and
``__call__`` on different threads, and an EGL context made in ``__init__`` fails with EGL_BAD_ACCESS) or
one :class:`~rewardkit.engines.jobs.ScoreWorker` (one ``ScorerSet``, loaded once per actor). Actors ask
for ``num_gpus`` each (default: 1 where the cluster has GPUs, else 0) and ``num_cpus`` each (default 1).
The per-item step is the local engine's, so renders and scores are the same; each record also names the
Ray node that did the item (``node_id``).

Every node must see the manifest's meshes and the output folder at the same paths (a shared file system)
and have rewardkit installed; the driver writes the summary / results table as records stream back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rewardkit.engines.jobs import EngineError, Record, RenderJob, RenderWorker, ScoreJob, ScoreWorker
from rewardkit.engines.manifest import Item


class _Actor:
    """The callable class of ``map_batches``: items in, one JSON record per item out."""

    def __init__(self, kind: str, job: Any) -> None:
        self.worker = RenderWorker(job) if kind == "render" else ScoreWorker(job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [Item(int(r), str(i), str(m), str(p) or None)
                 for r, i, m, p in zip(batch["row"], batch["id"], batch["mesh"], batch["prompt"])]
        return {"record": np.array([json.dumps(rec) for rec in self.worker(items)], dtype=object)}


@dataclass
class RayEngine:
    """``address``: ``None`` (start a local Ray instance), ``"auto"`` (the cluster this machine belongs to)
    or ``"ray://host:10001"``; an already initialised Ray (``ray.init`` by the caller) is used as it is.
    ``actors``: actors in the pool (default: the cluster's GPUs when actors take GPUs, else its CPUs /
    ``num_cpus``); ``batch_size``: items per ``map_batches`` call (render; scoring uses the job's)."""

    address: str | None = None
    actors: int | None = None
    num_gpus: float | None = None
    num_cpus: float = 1.0
    batch_size: int = 4
    name: str = "ray"

    def connect(self) -> Any:
        """``ray`` initialised (once): the caller's instance, or one started/joined at ``address``."""
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EngineError(f"cannot start or reach Ray at {self.address or 'a new local instance'}: {exc}") from None
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" lines per run
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "progress bars disabled"
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # rewardkit shows its own progress
        ctx.print_on_execution_start = False
        return ray

    def _resources(self, ray: Any) -> tuple[int, float]:
        res = ray.cluster_resources()
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if res.get("GPU", 0) > 0 else 0.0)
        if self.actors is not None:
            n = self.actors
        elif gpus > 0:
            n = int(res.get("GPU", 0) // gpus)
        else:
            n = int(res.get("CPU", 1) // max(self.num_cpus, 1e-9))
        return max(1, n), gpus

    def _run(self, kind: str, job: Any, items: Sequence[Item], batch_size: int) -> Iterator[Record]:
        if not items:
            return
        ray = self.connect()
        actors, gpus = self._resources(ray)
        actors = min(actors, max(1, -(-len(items) // batch_size)))
        rows = [{"row": it.row, "id": it.id, "mesh": it.mesh, "prompt": it.prompt or ""} for it in items]
        blocks = max(actors, min(-(-len(rows) // batch_size), 4 * actors * 8))
        ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _Actor, fn_constructor_args=(kind, job), batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=self.num_cpus, num_gpus=gpus)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for line in batch["record"]:
                yield json.loads(line)

    def render(self, job: RenderJob, items: Sequence[Item]) -> Iterator[Record]:
        return self._run("render", job, items, self.batch_size)

    def score(self, job: ScoreJob, items: Sequence[Item]) -> Iterator[Record]:
        return self._run("score", job, items, job.batch_size)

    def describe(self) -> dict:
        return asdict(self)


__all__ = ["RayEngine"]
