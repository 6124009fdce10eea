"""Pull: Label Studio JSON export -> ``preferences`` table.

Accepted result shapes (Label Studio JSON export, one task with ``annotations[]``):

- ``{"type": "choices", "from_name": "global"|"local", "value": {"choices": ["A"|"B"|"Tie"|"Both bad"]}}``
- ``{"type": "pairwise", "from_name": <name>, "value": {"selected": "left"|"right"}}`` (Label Studio's
  ``Pairwise`` tag: left = candidate A, right = candidate B; it has no tie state). Its question comes
  from ``question_map[from_name]``.
- anything else (``textarea`` comments, ...) is ignored and counted.

Labels are first read from the annotator's point of view (A = left) and then mapped to the pair:
the task's ``left_item`` says which of ``pairs.item_a`` / ``pairs.item_b`` was shown on the left, so
a swapped display maps A back to ``b``. Cancelled (skipped) and empty annotations, malformed tasks,
annotations and results are skipped and counted, never fatal. Several annotators of one task give
separate rows; the same annotator answering the same pair and question twice keeps the latest answer.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import polars as pl

from rewardkit.data.tables import PREFERENCES_SCHEMA, conform

CHOICE_LABELS = {"a": "a", "b": "b", "tie": "tie", "both bad": "both_bad", "both_bad": "both_bad", "bothbad": "both_bad"}
PAIRWISE_LABELS = {"left": "a", "right": "b"}
DEFAULT_QUESTION_MAP = {"global": "global", "local": "local"}
FLIP = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}
SOURCE = "labelstudio"


@dataclass
class PullResult:
    preferences: pl.DataFrame
    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> dict[str, int]:
        keys = ("cancelled", "empty", "malformed_task", "malformed_annotation", "malformed_result",
                "unknown_pair", "unknown_question", "conflicting_result", "duplicate")
        return {k: int(self.counts.get(k, 0)) for k in keys if self.counts.get(k, 0)}


def _annotator(completed_by: Any, users: dict[int, str]) -> str | None:
    if isinstance(completed_by, bool) or completed_by is None:
        return None
    if isinstance(completed_by, int):
        return users.get(completed_by, f"user:{completed_by}")
    if isinstance(completed_by, dict):
        for k in ("email", "username"):
            if completed_by.get(k):
                return str(completed_by[k])
        if isinstance(completed_by.get("id"), int):
            return users.get(completed_by["id"], f"user:{completed_by['id']}")
        return None
    if isinstance(completed_by, str) and completed_by.strip():
        return completed_by.strip()
    return None


def _lead_time(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) and v >= 0 else None


def _read_result(r: Any, question_map: dict[str, str]) -> tuple[str, str] | str:
    """(question, display label) or the name of the counter to bump."""
    if not isinstance(r, dict):
        return "malformed_result"
    rtype, value, name = r.get("type"), r.get("value"), r.get("from_name")
    if rtype not in ("choices", "pairwise"):
        return "ignored_result"
    if not isinstance(value, dict) or not isinstance(name, str):
        return "malformed_result"
    question = question_map.get(name)
    if question is None:
        return "unknown_question"
    if rtype == "choices":
        ch = value.get("choices")
        if not isinstance(ch, list) or len(ch) != 1 or not isinstance(ch[0], str):
            return "malformed_result"
        label = CHOICE_LABELS.get(ch[0].strip().lower())
    else:
        sel = value.get("selected")
        label = PAIRWISE_LABELS.get(sel) if isinstance(sel, str) else None
    if label is None:
        return "malformed_result"
    return question, label


def convert_export(
    tasks: Iterable[Any],
    pairs: pl.DataFrame,
    *,
    users: dict[int, str] | None = None,
    question_map: dict[str, str] | None = None,
    source: str = SOURCE,
) -> PullResult:
    """Convert Label Studio JSON export tasks into a preferences table (see module docstring)."""
    users = users or {}
    qmap = dict(DEFAULT_QUESTION_MAP if question_map is None else question_map)
    pair_sides = {pid: (a, b) for pid, a, b in pairs.select("pair_id", "item_a", "item_b").iter_rows()}
    counts: Counter = Counter()
    problems: list[str] = []
    best: dict[tuple[str, str, str], tuple[tuple, dict]] = {}

    def problem(kind: str, where: str) -> None:
        counts[kind] += 1
        if len(problems) < 200:
            problems.append(f"{kind}: {where}")

    if isinstance(tasks, dict):  # a single task
        tasks = [tasks]
    for ti, task in enumerate(tasks):
        counts["tasks"] += 1
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problem("malformed_task", f"task #{ti}: no data object")
            continue
        tid = task.get("id", f"#{ti}")
        data = task["data"]
        pid = data.get("pair_id")
        if not isinstance(pid, str) or not pid:
            problem("malformed_task", f"task {tid}: no pair_id in data")
            continue
        if pid not in pair_sides:
            problem("unknown_pair", f"task {tid}: pair_id {pid} is not in the pairs table")
            continue
        item_a, item_b = pair_sides[pid]
        left = data.get("left_item")
        if left is None or left == item_a:
            flipped = False
        elif left == item_b:
            flipped = True
        else:
            problem("malformed_task", f"task {tid}: left_item {left!r} is neither item of pair {pid}")
            continue
        right = data.get("right_item")
        if right is not None and right != (item_a if flipped else item_b):
            problem("malformed_task", f"task {tid}: right_item {right!r} is not the other item of pair {pid}")
            continue
        anns = task.get("annotations", [])
        if not isinstance(anns, list):
            problem("malformed_task", f"task {tid}: annotations is not a list")
            continue
        for ai, ann in enumerate(anns):
            counts["annotations"] += 1
            if not isinstance(ann, dict):
                problem("malformed_annotation", f"task {tid}: annotation #{ai} is not an object")
                continue
            aid = ann.get("id", f"#{ai}")
            if ann.get("was_cancelled"):
                counts["cancelled"] += 1
                continue
            result = ann.get("result")
            if result is None or result == []:
                counts["empty"] += 1
                continue
            if not isinstance(result, list):
                problem("malformed_annotation", f"task {tid} annotation {aid}: result is not a list")
                continue
            annotator = _annotator(ann.get("completed_by"), users)
            if annotator is None:
                problem("malformed_annotation", f"task {tid} annotation {aid}: no completed_by")
                continue
            found: dict[str, set[str]] = {}
            for r in result:
                got = _read_result(r, qmap)
                if isinstance(got, str):
                    if got == "ignored_result":
                        counts[got] += 1
                    else:
                        problem(got, f"task {tid} annotation {aid}: {str(r)[:120]}")
                    continue
                found.setdefault(got[0], set()).add(got[1])
            if not found:
                counts["annotations_without_answers"] += 1
            for question, labels in found.items():
                if len(labels) > 1:
                    problem("conflicting_result", f"task {tid} annotation {aid}: {question} answered {sorted(labels)}")
                    continue
                label = labels.pop()
                if flipped:
                    label = FLIP[label]
                created = ann.get("created_at") if isinstance(ann.get("created_at"), str) else None
                updated = ann.get("updated_at") if isinstance(ann.get("updated_at"), str) else created
                row = {
                    "pair_id": pid, "question": question, "label": label, "annotator": annotator,
                    "lead_time_s": _lead_time(ann.get("lead_time")), "created_at": created, "source": source,
                }
                key = (pid, question, annotator)
                order = (updated or "", aid if isinstance(aid, int) else -1)
                if key in best:
                    counts["duplicate"] += 1
                    if order <= best[key][0]:
                        continue
                best[key] = (order, row)
    rows = [v[1] for v in best.values()]
    df = pl.DataFrame(rows, schema=PREFERENCES_SCHEMA) if rows else pl.DataFrame(schema=PREFERENCES_SCHEMA)
    df = conform(df, "preferences").sort(["pair_id", "question", "annotator"])
    counts["rows"] = df.height
    return PullResult(preferences=df, counts=counts, problems=problems)


def export_tasks(client, project_id: int, *, timeout: int = 300) -> list[dict]:
    """Label Studio JSON export of the project, cancelled (skipped) annotations included so that they
    can be counted."""
    return client.projects.exports.as_json(
        project_id,
        timeout=timeout,
        create_kwargs={"annotation_filter_options": {"usual": True, "ground_truth": True, "skipped": True}},
    )


def user_map(client) -> dict[int, str]:
    """Label Studio user id -> e-mail (or username)."""
    out: dict[int, str] = {}
    for u in client.users.list():
        out[int(u.id)] = u.email or u.username or f"user:{u.id}"
    return out


def pull(client, project_id: int, pairs: pl.DataFrame, *, question_map: dict[str, str] | None = None) -> tuple[PullResult, list[dict]]:
    """Export the project and convert it; returns the result and the raw export."""
    raw = export_tasks(client, project_id)
    return convert_export(raw, pairs, users=user_map(client), question_map=question_map), raw
