"""Batch engines: render and score the items of a manifest on this machine or on a Ray cluster.

::

    from rewardkit.engines import LocalEngine, RayEngine, ScoreJob, render_manifest, score_manifest
    render_manifest("items.parquet", "renders/", RayEngine(address="auto"), protocol="orbit6")
    score_manifest("items.csv", "scores.jsonl", LocalEngine(), ScoreJob(scorers=("scorers/",)))

Modules, each importing only those above it:

- ``manifest``  reading a manifest (parquet / CSV / JSONL: mesh, prompt, id) in chunks, path rules;
- ``jobs``      what a batch does (:class:`RenderJob`, :class:`ScoreJob`), the per-item workers, skipping
  finished items, progress and the outputs (render folders + ``summary.json``; a results table);
- ``local``     :class:`LocalEngine` (``render_batch`` worker processes, ``score_meshes`` in process);
- ``ray_data``  :class:`RayEngine` (Ray Data ``map_batches`` with a pool of stateful actors; needs the
  ``[ray]`` extra, imported only when used).
"""

from rewardkit.engines.jobs import (
    Engine,
    EngineError,
    ManifestRun,
    RenderJob,
    RenderWorker,
    ScoreJob,
    ScoreWorker,
    read_results,
    render_manifest,
    score_manifest,
)
from rewardkit.engines.local import LocalEngine
from rewardkit.engines.manifest import Item, ManifestError, read_manifest
from rewardkit.engines.ray_data import RayEngine  # imports ray only when an engine runs

__all__ = ["Engine", "EngineError", "Item", "LocalEngine", "ManifestError", "ManifestRun", "RayEngine", "RenderJob",
           "RenderWorker", "ScoreJob", "ScoreWorker", "read_manifest", "read_results", "render_manifest",
           "score_manifest"]

