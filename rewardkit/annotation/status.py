"""Progress of a labeling project, from its JSON export."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rewardkit.annotation.pull import _annotator


def progress(export: list[Any], users: dict[int, str] | None = None) -> dict:
    """tasks, tasks done (at least one submitted, non-cancelled annotation), annotations, cancelled,
    and per annotator: submitted and cancelled counts."""
    users = users or {}
    done = anns = cancelled = 0
    per: dict[str, Counter] = {}
    tasks = [t for t in export if isinstance(t, dict)]
    for t in tasks:
        submitted = 0
        for a in t.get("annotations") or []:
            if not isinstance(a, dict):
                continue
            who = _annotator(a.get("completed_by"), users) or "?"
            c = per.setdefault(who, Counter())
            if a.get("was_cancelled"):
                cancelled += 1
                c["cancelled"] += 1
            else:
                anns += 1
                submitted += 1
                c["submitted"] += 1
        done += submitted > 0
    return {
        "tasks": len(tasks),
        "tasks_done": done,
        "tasks_left": len(tasks) - done,
        "annotations": anns,
        "cancelled": cancelled,
        "per_annotator": {k: {"submitted": v["submitted"], "cancelled": v["cancelled"]} for k, v in sorted(per.items())},
    }
