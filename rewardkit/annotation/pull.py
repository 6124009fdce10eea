"""Pull: Label Studio JSON export -> ``preferences`` table.

Accepted result shapes (Label Studio JSON export, one task with ``annotations[]``; exports of old
Label Studio versions name them ``completions[]``, read the same way):

- ``{"type": "choices", "from_name": "global"|"local", "value": {"choices": ["A"|"B"|"Tie"|"Both bad"]}}``
- ``{"type": "pairwise", "from_name": <name>, "value": {"selected": "left"|"right"}}`` (Label Studio's
  ``Pairwise`` tag: left = candidate A, right = candidate B; it has no tie state). Its question comes
  from ``question_map[from_name]``.
- ``{"type": "textarea", "value": {"text": [...]}}``: the annotator's comment, copied to the
  ``comment`` column of every row of that annotation.
- anything else is ignored and counted.

Labels are first read from the annotator's point of view (A = left) and then mapped to the pair:
the task's ``left_item`` says which of ``pairs.item_a`` / ``pairs.item_b`` was shown on the left, so
a swapped display maps A back to ``b``. Several annotators of one task give separate rows; the same
annotator answering the same pair and question twice keeps the latest answer (``updated_at``, else
``created_at``, compared as times; ties: the higher annotation id).

Nothing in an export is fatal. Cancelled (skipped) and empty annotations are counted. Malformed tasks,
annotations and results give no row and are listed in ``PullResult.problems`` with their task id.
Repairs that keep the row (text with invalid code points such as a lone surrogate, replaced by U+FFFD;
a timestamp that does not parse) are listed in ``PullResult.warnings``. ``was_cancelled`` is read
strictly: ``true``/``false``, ``"true"``/``"false"``, ``0``/``1``; any other value is a problem.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import polars as pl

from rewardkit.data.tables import PREFERENCES_SCHEMA, conform

CHOICE_LABELS = {"a": "a", "b": "b", "tie": "tie", "both bad": "both_bad", "both_bad": "both_bad", "bothbad": "both_bad"}
PAIRWISE_LABELS = {"left": "a", "right": "b"}
DEFAULT_QUESTION_MAP = {"global": "global", "local": "local"}
FLIP = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}
SOURCE = "labelstudio"
# counters of annotations/results that give no row because they are not answers
NOT_ANSWERS = ("cancelled", "empty", "duplicate")
# counters of export entries that give no row because they are broken (each one is in ``problems``)
FAILURES = ("malformed_task", "malformed_annotation", "malformed_result", "unknown_pair", "unknown_question",
            "conflicting_result")
_MIN_TIME = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Problem:
    """One entry of an export that lost its row (``PullResult.problems``) or was repaired
    (``PullResult.warnings``), and where it is: the task id (``#<index>`` without one) and annotation id."""

    kind: str
    task: Any
    annotation: Any = None
    detail: str = ""

    def __str__(self) -> str:
        where = f"task {_show(self.task)}"
        if self.annotation is not None:
            where += f" annotation {_show(self.annotation)}"
        return clean_text(f"{self.kind}: {where}: {self.detail}")[0]


@dataclass
class PullResult:
    """The preferences table of an export, with what was counted, lost and repaired on the way."""

    preferences: pl.DataFrame
    counts: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> dict[str, int]:
        """Annotations/results that gave no row, by reason (not answers and failures alike)."""
        return {k: int(self.counts.get(k, 0)) for k in NOT_ANSWERS + FAILURES if self.counts.get(k, 0)}

    @property
    def failed(self) -> dict[str, int]:
        """Only the broken entries (every one is listed in ``problems``)."""
        return {k: int(self.counts.get(k, 0)) for k in FAILURES if self.counts.get(k, 0)}

    def summary(self) -> str:
        """One line in the words ``rewardkit annotate status`` uses: answered, skipped, tasks."""
        c = self.counts
        extra = [f"{c['skipped']} skipped"]
        for k, word in (("empty", "empty"), ("malformed", "malformed")):
            if c.get(k):
                extra.append(f"{c[k]} {word}")
        return (f"{self.preferences.height} preference rows from {c.get('answered', 0)} answered annotations "
                f"({', '.join(extra)}) on {c.get('tasks', 0)} tasks")


# -- small readers -------------------------------------------------------------------------------
def clean_text(s: str) -> tuple[str, bool]:
    """``s`` with code points that UTF-8 cannot encode (lone surrogates) replaced by U+FFFD, and
    whether anything was replaced."""
    try:
        s.encode("utf-8")
        return s, False
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in s), True


def _show(v: Any) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def parse_bool(v: Any) -> bool | None:
    """``was_cancelled`` and friends: absent/null -> False; true/false, "true"/"false", 0/1 -> the
    boolean; anything else -> None (not a boolean)."""
    if v is None or isinstance(v, bool):
        return bool(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        return {"true": True, "false": False, "1": True, "0": False}.get(v.strip().lower())
    return None


def parse_time(v: Any) -> datetime | None:
    """An ISO 8601 timestamp as an aware UTC datetime (naive ones are taken as UTC); None if unreadable."""
    if not isinstance(v, str) or not v.strip():
        return None
    try:
        dt = datetime.fromisoformat(v.strip())
    except ValueError:
        return None
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def iso_utc(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def user_id(v: Any) -> int | None:
    """A Label Studio user id given as an int, an integral float or a string of digits."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return None


def normalize_users(users: dict | None) -> dict[int, str]:
    """A users map with int keys (a map read from JSON has string keys: ``{"1": "a@lab.org"}``)."""
    out: dict[int, str] = {}
    for k, v in (users or {}).items():
        uid = user_id(k)
        if uid is not None and isinstance(v, str) and v.strip():
            out[uid] = v.strip()
    return out


def _annotator(completed_by: Any, users: dict[int, str]) -> str | None:
    """The annotator's name: the users map's entry for the id, else the e-mail or username in the
    export, else ``user:<id>``; None when the annotation does not say who made it."""
    if isinstance(completed_by, bool) or completed_by is None:
        return None
    uid = user_id(completed_by)
    if uid is not None:
        return users.get(uid, f"user:{uid}")
    if isinstance(completed_by, dict):
        uid = user_id(completed_by.get("id"))
        if uid is not None and uid in users:
            return users[uid]
        for k in ("email", "username"):
            if isinstance(completed_by.get(k), str) and completed_by[k].strip():
                return completed_by[k].strip()
        return f"user:{uid}" if uid is not None else None
    if isinstance(completed_by, str) and completed_by.strip():
        return completed_by.strip()
    return None


def _learn_users(tasks: list, users: dict[int, str]) -> dict[int, str]:
    """``users`` plus the id -> e-mail of annotations that carry a user object, so that ``completed_by:
    7`` and ``completed_by: {"id": 7, "email": ...}`` in one export are the same annotator."""
    out = dict(users)
    for task in tasks:
        if not isinstance(task, dict):
            continue
        for ann in task_annotations(task) or []:
            cb = ann.get("completed_by") if isinstance(ann, dict) else None
            if isinstance(cb, dict):
                uid = user_id(cb.get("id"))
                name = next((cb[k].strip() for k in ("email", "username") if isinstance(cb.get(k), str) and cb[k].strip()), None)
                if uid is not None and name and uid not in out:
                    out[uid] = name
    return out


def _lead_time(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) and v >= 0 else None


def task_annotations(task: dict) -> Any:
    """The task's annotations: ``annotations``, or ``completions`` in exports of old Label Studio versions."""
    anns = task.get("annotations")
    if anns is None or anns == []:
        old = task.get("completions")
        if old is not None and old != []:
            return old
    return [] if anns is None else anns


def annotation_state(ann: Any) -> str:
    """``answered`` | ``skipped`` (cancelled) | ``empty`` (no result) | ``malformed``; the one
    classification ``pull`` and ``status`` both count with."""
    if not isinstance(ann, dict):
        return "malformed"
    cancelled = parse_bool(ann.get("was_cancelled"))
    if cancelled is None:
        return "malformed"
    if cancelled:
        return "skipped"
    result = ann.get("result")
    if result is None or result == []:
        return "empty"
    return "answered" if isinstance(result, list) else "malformed"


def _read_result(r: Any, question_map: dict[str, str]) -> tuple[str, str] | str:
    """(question, display label), ("comment", text) or the name of the counter to bump."""
    if not isinstance(r, dict):
        return "malformed_result"
    rtype, value, name = r.get("type"), r.get("value"), r.get("from_name")
    if rtype == "textarea":
        texts = value.get("text") if isinstance(value, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list):
            return "ignored_result"
        text = "\n".join(t.strip() for t in texts if isinstance(t, str) and t.strip())
        return ("comment", text) if text else "ignored_result"
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


# -- the conversion ------------------------------------------------------------------------------
def convert_export(
    tasks: Iterable[Any],
    pairs: pl.DataFrame,
    *,
    users: dict | None = None,
    question_map: dict[str, str] | None = None,
    source: str = SOURCE,
) -> PullResult:
    """Convert Label Studio JSON export tasks into a preferences table (see module docstring).
    ``users`` maps Label Studio user ids (int or digit-string keys) to names."""
    qmap = dict(DEFAULT_QUESTION_MAP if question_map is None else question_map)
    pair_sides = {pid: (a, b) for pid, a, b in pairs.select("pair_id", "item_a", "item_b").iter_rows()}
    counts: Counter = Counter({"answered": 0, "skipped": 0})
    problems: list[Problem] = []
    warnings: list[Problem] = []
    best: dict[tuple[str, str, str], tuple[tuple, dict]] = {}

    def problem(kind: str, task: Any, detail: str, ann: Any = None) -> None:
        counts[kind] += 1
        problems.append(Problem(kind, task, ann, detail))

    def text(s: str, what: str, task: Any, ann: Any) -> str:
        out, changed = clean_text(s)
        if changed:
            counts["invalid_text"] += 1
            warnings.append(Problem("invalid_text", task, ann, f"{what} had invalid code points, replaced by U+FFFD"))
        return out

    if isinstance(tasks, dict):  # a single task
        tasks = [tasks]
    tasks = list(tasks)
    users = _learn_users(tasks, normalize_users(users))
    for ti, task in enumerate(tasks):
        counts["tasks"] += 1
        tid = task.get("id", f"#{ti}") if isinstance(task, dict) else f"#{ti}"
        # every annotation is counted (answered / skipped / ...) as `status` counts it, even on a broken task
        all_anns = task_annotations(task) if isinstance(task, dict) else None
        for ann in all_anns if isinstance(all_anns, list) else []:
            state = annotation_state(ann)
            counts["annotations"] += 1
            counts[state] += 1
            if state == "skipped":
                counts["cancelled"] += 1
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problem("malformed_task", tid, "no data object")
            continue
        data = task["data"]
        pid = data.get("pair_id")
        if not isinstance(pid, str) or not pid:
            problem("malformed_task", tid, "no pair_id in data")
            continue
        if pid not in pair_sides:
            problem("unknown_pair", tid, f"pair_id {_show(pid)} is not in the pairs table")
            continue
        item_a, item_b = pair_sides[pid]
        left = data.get("left_item")
        if left is None or left == item_a:
            flipped = False
        elif left == item_b:
            flipped = True
        else:
            problem("malformed_task", tid, f"left_item {_show(left)} is neither item of pair {pid}")
            continue
        right = data.get("right_item")
        if right is not None and right != (item_a if flipped else item_b):
            problem("malformed_task", tid, f"right_item {_show(right)} is not the other item of pair {pid}")
            continue
        if task.get("annotations") in (None, []) and task.get("completions") not in (None, []):
            counts["completions_tasks"] += 1
        anns = task_annotations(task)
        if not isinstance(anns, list):
            problem("malformed_task", tid, "annotations is not a list")
            continue
        for ai, ann in enumerate(anns):
            if not isinstance(ann, dict):
                problem("malformed_annotation", tid, "not an object", f"#{ai}")
                continue
            aid = ann.get("id", f"#{ai}")
            state = annotation_state(ann)
            if state in ("skipped", "empty"):
                continue
            if state == "malformed":
                if parse_bool(ann.get("was_cancelled")) is None:
                    problem("malformed_annotation", tid, f"was_cancelled {_show(ann.get('was_cancelled'))} is not a boolean", aid)
                else:
                    problem("malformed_annotation", tid, "result is not a list", aid)
                continue
            annotator = _annotator(ann.get("completed_by"), users)
            if annotator is None:
                problem("malformed_annotation", tid, "no completed_by", aid)
                continue
            annotator = text(annotator, "annotator", tid, aid)
            found: dict[str, set[str]] = {}
            comments: list[str] = []
            for r in ann["result"]:
                got = _read_result(r, qmap)
                if isinstance(got, str):
                    if got == "ignored_result":
                        counts[got] += 1
                    else:
                        problem(got, tid, str(r)[:120], aid)
                    continue
                if got[0] == "comment":
                    counts["comments"] += 1
                    comments.append(got[1])
                    continue
                found.setdefault(got[0], set()).add(got[1])
            if not found:
                counts["annotations_without_answers"] += 1
            comment = text("\n".join(comments), "comment", tid, aid) if comments else None
            created_t, updated_t = parse_time(ann.get("created_at")), parse_time(ann.get("updated_at"))
            if created_t is not None:
                created = iso_utc(created_t)
            else:
                raw = ann.get("created_at")
                created = text(raw, "created_at", tid, aid) if isinstance(raw, str) and raw.strip() else None
                if created is not None:
                    counts["bad_timestamp"] += 1
                    warnings.append(Problem("bad_timestamp", tid, aid, f"created_at {_show(raw)} is not an ISO 8601 time"))
            order = (updated_t or created_t or _MIN_TIME, aid if isinstance(aid, int) and not isinstance(aid, bool) else -1)
            for question, labels in found.items():
                if len(labels) > 1:
                    problem("conflicting_result", tid, f"{question} answered {sorted(labels)}", aid)
                    continue
                label = labels.pop()
                if flipped:
                    label = FLIP[label]
                row = {
                    "pair_id": pid, "question": question, "label": label, "annotator": annotator,
                    "lead_time_s": _lead_time(ann.get("lead_time")), "created_at": created, "source": source,
                    "comment": comment,
                }
                key = (pid, question, annotator)
                if key in best:
                    counts["duplicate"] += 1
                    if order <= best[key][0]:
                        continue
                best[key] = (order, row)
    rows = [v[1] for v in best.values()]
    df = pl.DataFrame(rows, schema=PREFERENCES_SCHEMA) if rows else pl.DataFrame(schema=PREFERENCES_SCHEMA)
    df = conform(df, "preferences").sort(["pair_id", "question", "annotator"])
    counts["rows"] = df.height
    return PullResult(preferences=df, counts=counts, problems=problems, warnings=warnings)


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
