"""Progress of a labeling project, from its JSON export.

Counted with the words and the classification ``pull`` uses (``annotation_state``):

- annotations: ``answered`` (submitted with a result), ``skipped`` (the annotator pressed Skip:
  cancelled), ``empty`` / ``malformed`` (neither; shown only when there are any);
- tasks: ``answered`` (at least one answered annotation), ``skipped`` (only skipped annotations),
  ``left`` (nobody answered or skipped it yet). With overlap asked for (``annotators_per_task`` > 1),
  ``below_overlap`` counts the tasks with fewer answered annotations than that.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rewardkit.annotation.pull import _annotator, _learn_users, annotation_state, normalize_users, task_annotations


def progress(export: list[Any], users: dict | None = None, *, annotators_per_task: int | None = None) -> dict:
    """Tasks (answered / skipped / left), annotations (answered / skipped) and, per annotator, the
    answered and skipped counts (see module docstring)."""
    tasks = [t for t in export if isinstance(t, dict)]
    users = _learn_users(tasks, normalize_users(users))
    totals: Counter = Counter()
    per: dict[str, Counter] = {}
    t_answered = t_skipped = below = 0
    for t in tasks:
        anns = task_annotations(t)
        states = Counter()
        for a in anns if isinstance(anns, list) else []:
            state = annotation_state(a)
            states[state] += 1
            totals[state] += 1
            if state in ("answered", "skipped"):
                who = _annotator(a.get("completed_by"), users) or "?"
                per.setdefault(who, Counter())[state] += 1
        if states["answered"]:
            t_answered += 1
        elif states["skipped"]:
            t_skipped += 1
        if annotators_per_task and annotators_per_task > 1 and states["answered"] < annotators_per_task:
            below += 1
    out = {
        "tasks": len(tasks),
        "tasks_answered": t_answered,
        "tasks_skipped": t_skipped,
        "tasks_left": len(tasks) - t_answered - t_skipped,
        "annotations": sum(totals.values()),
        "answered": totals["answered"],
        "skipped": totals["skipped"],
        "empty": totals["empty"],
        "malformed": totals["malformed"],
        "per_annotator": {k: {"answered": v["answered"], "skipped": v["skipped"]} for k, v in sorted(per.items())},
    }
    if annotators_per_task:
        out["annotators_per_task"] = int(annotators_per_task)
        if annotators_per_task > 1:
            out["tasks_below_overlap"] = below
    return out


def progress_line(p: dict) -> str:
    """``5 tasks: 4 answered, 1 skipped, 0 left; 5 annotations: 4 answered, 1 skipped``."""
    line = (f"{p['tasks']} tasks: {p['tasks_answered']} answered, {p['tasks_skipped']} skipped, {p['tasks_left']} left; "
            f"{p['annotations']} annotations: {p['answered']} answered, {p['skipped']} skipped")
    for k in ("empty", "malformed"):
        if p.get(k):
            line += f", {p[k]} {k}"
    if p.get("tasks_below_overlap") is not None:
        line += f"; {p['tasks_below_overlap']} tasks have fewer than {p['annotators_per_task']} answers"
    return line
