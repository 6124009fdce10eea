"""Tasks: one Label Studio task per pair, referencing render grids through local-files URLs.

Task data::

    pair_id, prompt_id, prompt
    left_item, right_item          the item shown as candidate A (left) and as candidate B (right)
    a_geometry, a_rgb              /data/local-files/?d=<path of left_item's grid_<mode>.png>
    b_geometry, b_rgb              the same for right_item
    rewardkit_task_version         1

Display order. By default (``display="pairs"``) candidate A is ``pairs.item_a``: the pairs table's A/B
side is already a fair coin per pair, so no second randomization is needed. ``display="random"``
(seeded) or ``"swapped"`` flip sides at display time; either way the task records ``left_item`` and
``pull`` maps answers back to ``item_a``/``item_b`` through it, so labels are correct whatever was shown.

Pushing is idempotent: pairs whose ``pair_id`` already has a task in the project are skipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from rewardkit.annotation.errors import AnnotationError, MissingRenderFiles
from rewardkit.annotation.project import local_files_url
from rewardkit.data.hf import grid_path

TASK_VERSION = 1
MODES = ("geometry", "rgb")
DISPLAY = ("pairs", "random", "swapped")


def build_tasks(
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    document_root: str | Path,
    *,
    display: str = "pairs",
    seed: int = 0,
    modes: tuple[str, ...] = MODES,
    base_dir: str | Path | None = None,
) -> list[dict]:
    """Task data for every pair. Raises ``MissingRenderFiles`` listing *all* missing grids, and
    ``AnnotationError`` for pairs naming unknown items or renders outside the document root.
    Relative ``render_dir`` values are taken relative to ``base_dir`` (default: the working directory)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if display not in DISPLAY:
        raise ValueError(f"display must be one of {DISPLAY}, not {display!r}")
    by_id = {r["item_id"]: r for r in items.select("item_id", "prompt_id", "prompt", "render_dir").iter_rows(named=True)}
    unknown = sorted({i for a, b in pairs.select("item_a", "item_b").iter_rows() for i in (a, b) if i not in by_id})
    if unknown:
        raise AnnotationError(f"pairs refer to items missing from the items table: {unknown[:20]}")
    missing: list[str] = []
    seen: set[str] = set()
    for it in sorted({i for a, b in pairs.select("item_a", "item_b").iter_rows() for i in (a, b)}):
        rd = base / by_id[it]["render_dir"]
        for m in modes:
            g = grid_path(rd, m)
            if str(g) not in seen and not g.is_file():
                missing.append(str(g))
            seen.add(str(g))
    if missing:
        raise MissingRenderFiles(missing)
    rng = random.Random(seed)
    tasks = []
    for row in pairs.iter_rows(named=True):
        left, right = row["item_a"], row["item_b"]
        flip = display == "swapped" or (display == "random" and rng.random() < 0.5)
        if flip:
            left, right = right, left
        data = {
            "pair_id": row["pair_id"],
            "prompt_id": row["prompt_id"],
            "prompt": by_id[row["item_a"]]["prompt"],
            "left_item": left,
            "right_item": right,
            "rewardkit_task_version": TASK_VERSION,
        }
        for side, item in (("a", left), ("b", right)):
            for m in modes:
                data[f"{side}_{m}"] = local_files_url(grid_path(base / by_id[item]["render_dir"], m), document_root)
        tasks.append(data)
    return tasks


@dataclass
class PushResult:
    """What ``push_tasks`` did: tasks imported, pairs skipped because their task exists, the new task ids."""
    imported: int
    skipped_existing: int
    task_ids: list[int] = field(default_factory=list)


def existing_pair_ids(client, project_id: int) -> dict[str, int]:
    """pair_id -> task id of the tasks already in the project."""
    out: dict[str, int] = {}
    for t in client.tasks.list(project=project_id, fields="all", page_size=500):
        data = t.data or {}
        pid = data.get("pair_id")
        if pid is not None:
            out.setdefault(str(pid), int(t.id))
    return out


def push_tasks(client, project_id: int, tasks: list[dict], *, batch_size: int = 500) -> PushResult:
    """Import the tasks whose ``pair_id`` has no task in the project yet."""
    have = existing_pair_ids(client, project_id)
    new, skipped, queued = [], 0, set()
    for t in tasks:
        pid = str(t["pair_id"])
        if pid in have or pid in queued:
            skipped += 1
            continue
        queued.add(pid)
        new.append(t)
    ids: list[int] = []
    for i in range(0, len(new), batch_size):
        batch = new[i : i + batch_size]
        resp = client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)
        got = list(getattr(resp, "task_ids", None) or [])
        if getattr(resp, "task_count", len(batch)) not in (None, len(batch)):
            raise AnnotationError(f"Label Studio imported {resp.task_count} of {len(batch)} tasks")
        ids += [int(x) for x in got]
    return PushResult(imported=len(new), skipped_existing=skipped, task_ids=ids)
