"""The scorer service's request batching: :class:`MicroBatcher` collects the :class:`Job` s of concurrent
requests in an asyncio queue for up to ``window_s`` (or until ``max_batch`` are waiting) and scores them with
one forward per scorer and view shape (at most ``max_forward_pixels`` view pixels per forward), in one worker
thread so the event loop stays free. It is the service's only batching mechanism, under uvicorn and in each
Ray Serve replica alike (:mod:`rewardkit.scoring.service_ray`).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rewardkit.scoring.base import ScorerSet
from rewardkit.scoring.core import score_samples_std
from rewardkit.scoring.errors import RequestError


@dataclass
class Job:
    """One item to score: its prompt, decoded views, the scorers to run and whether per-view scores are wanted."""

    prompt: str
    views: dict[str, torch.Tensor]  # mode -> uint8 [V, 3, H, W]
    scorers: list[str]
    per_view: bool


class MicroBatcher:
    """Collects jobs from concurrent requests and scores them together (one forward per scorer and shape)."""

    def __init__(self, scorers: ScorerSet, *, max_batch: int = 32, window_s: float = 0.005,
                 max_forward_pixels: int | None = None) -> None:
        self.scorers = scorers
        self.max_batch = max(1, int(max_batch))
        self.max_forward_pixels = int(max_forward_pixels) if max_forward_pixels else None
        self.window_s = max(0.0, float(window_s))
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardkit-forward")
        self._task: asyncio.Task | None = None
        self.stats = {"batches": 0, "items": 0, "forwards": 0, "max_batch_seen": 0, "last_batch_sizes": []}
        self._lock = threading.Lock()

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, job: Job) -> dict[str, Any]:
        assert self.queue is not None, "batcher not started"
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((job, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None
        while True:
            first = await self.queue.get()
            batch = [first]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                try:
                    batch.append(self.queue.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self.queue.get(), remaining))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            live = [(j, f) for j, f in batch if not f.done()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._forward, [j for j, _ in live])
            except Exception as exc:  # pragma: no cover - _forward catches per group
                results = [exc] * len(live)
            for (_, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _forward(self, jobs: list[Job]) -> list[Any]:
        """Runs in the worker thread: one forward per (scorer, view shapes) group."""
        out: list[Any] = [{"scores": {}, "per_view": {}, "std": {}} for _ in jobs]
        n_forwards = 0
        for name, scorer in self.scorers.items():
            groups: dict[tuple, list[int]] = {}
            for i, job in enumerate(jobs):
                if name in job.scorers:
                    key = tuple(tuple(job.views[m].shape) for m in scorer.modes)
                    groups.setdefault(key, []).append(i)
            chunks = []
            for idx in groups.values():  # at most max_forward_pixels view pixels per forward (at least one job)
                chunk, px = [], 0
                for i in idx:
                    n = sum(int(np.prod(jobs[i].views[m].shape)) // 3 for m in scorer.modes)
                    if chunk and self.max_forward_pixels and px + n > self.max_forward_pixels:
                        chunks.append(chunk)
                        chunk, px = [], 0
                    chunk.append(i)
                    px += n
                chunks.append(chunk)
            for idx in chunks:
                try:
                    want_pv = any(jobs[i].per_view for i in idx)
                    scores, pv, std = score_samples_std(scorer, [jobs[i].views for i in idx],
                                                        [jobs[i].prompt for i in idx], want_pv)
                    n_forwards += 1
                    for j, i in enumerate(idx):
                        out[i]["scores"][name] = scores[j]
                        if std is not None:
                            out[i]["std"][name] = std[j]
                        if pv is not None and jobs[i].per_view:
                            out[i]["per_view"][name] = pv[j]
                except Exception as exc:
                    for i in idx:
                        out[i] = RequestError(500, f"scorer {name!r} failed: {type(exc).__name__}: {exc}")
        for r in out:
            if isinstance(r, dict) and not r["per_view"]:
                r.pop("per_view")
            if isinstance(r, dict) and not r["std"]:
                r.pop("std")
        with self._lock:
            st = self.stats
            st["batches"] += 1
            st["items"] += len(jobs)
            st["forwards"] += n_forwards
            st["max_batch_seen"] = max(st["max_batch_seen"], len(jobs))
            st["last_batch_sizes"] = (st["last_batch_sizes"] + [len(jobs)])[-50:]
        return out


__all__ = ["Job", "MicroBatcher"]
