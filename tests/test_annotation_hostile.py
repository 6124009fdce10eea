"""Hostile Label Studio exports (issue 13, item 8): N valid answers in = N rows out, every broken entry
reported with its task id, nothing fatal. The exports are built here, as JSON text where it matters (a
lone surrogate only exists after ``json.loads`` of an escaped one)."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from rewardkit.annotation import convert_export
from rewardkit.annotation.pull import parse_bool
from rewardkit.annotation.status import progress
from rewardkit.data import read_preferences, write_table

PAIRS = pl.DataFrame({"pair_id": ["p1", "p2"], "prompt_id": ["q", "q"], "item_a": ["x", "y"], "item_b": ["y", "z"]})
SIDES = {"p1": ("x", "y"), "p2": ("y", "z")}


def _ann(who, g="A", loc="B", *, aid=1, cancelled=False, created="2026-01-01T00:00:00Z", updated=None, comment=None) -> dict:
    result = [{"type": "choices", "from_name": "global", "to_name": "a_geometry", "value": {"choices": [g]}},
              {"type": "choices", "from_name": "local", "to_name": "a_rgb", "value": {"choices": [loc]}}]
    if comment is not None:
        result.append({"type": "textarea", "from_name": "comment", "to_name": "prompt", "value": {"text": [comment]}})
    a = {"id": aid, "completed_by": who, "result": result, "lead_time": 4.0, "created_at": created,
         "updated_at": updated or created}
    if cancelled is not None:
        a["was_cancelled"] = cancelled
    return a


def _task(tid, anns, pair="p1", key="annotations") -> dict:
    left, right = SIDES[pair]
    return {"id": tid, "data": {"pair_id": pair, "left_item": left, "right_item": right}, key: list(anns)}


def test_lone_surrogate_in_names_and_comments_keeps_the_rows():
    export = json.loads(r'''[
      {"id": 1, "data": {"pair_id": "p1", "left_item": "x"}, "annotations": [
        {"id": 11, "completed_by": "ann\ud800@lab.org", "was_cancelled": false, "created_at": "2026-01-01T00:00:00Z",
         "result": [{"type": "choices", "from_name": "global", "value": {"choices": ["A"]}},
                    {"type": "choices", "from_name": "local", "value": {"choices": ["Tie"]}},
                    {"type": "textarea", "from_name": "comment", "value": {"text": ["bad \udfff beak"]}}]},
        {"id": 12, "completed_by": {"id": 5, "email": "five\ud83d@lab.org"}, "created_at": "2026-01-01T00:00:00Z",
         "result": [{"type": "choices", "from_name": "global", "value": {"choices": ["B"]}}]},
        {"id": 13, "completed_by": 9, "created_at": "2026-01-01T00:00:00Z",
         "result": [{"type": "choices", "from_name": "global", "value": {"choices": ["Tie"]}}]}]},
      {"id": 2, "data": {"pair_id": "p\ud800", "left_item": "x"}, "annotations": []}
    ]''')
    res = convert_export(export, PAIRS, users={9: "nine\udc00"})
    assert res.preferences.height == 4  # 2 + 1 + 1: every answer kept
    names = sorted(set(res.preferences["annotator"]))
    assert names == ["ann\ufffd@lab.org", "five\ufffd@lab.org", "nine\ufffd"]
    assert res.preferences.filter(pl.col("annotator") == "ann\ufffd@lab.org")["comment"].to_list() == ["bad \ufffd beak"] * 2
    kinds = sorted((w.kind, w.task, w.annotation) for w in res.warnings)
    assert kinds == [("invalid_text", 1, 11), ("invalid_text", 1, 11), ("invalid_text", 1, 12), ("invalid_text", 1, 13)]
    # the unknown pair's id is reported readable (its problem prints, the table writes)
    assert [(p.kind, p.task) for p in res.problems] == [("unknown_pair", 2)]
    for p in res.problems + res.warnings:
        str(p).encode("utf-8")
    assert res.summary().encode("utf-8")


def test_lone_surrogate_table_writes_and_reads_back(tmp_path):
    export = json.loads(r'[{"id": 1, "data": {"pair_id": "p1"}, "annotations": [{"id": 1, "completed_by": "a\ud800",'
                        r' "result": [{"type": "choices", "from_name": "global", "value": {"choices": ["A"]}}]}]}]')
    res = convert_export(export, PAIRS)
    write_table(res.preferences, tmp_path / "p.parquet", "preferences")
    assert read_preferences(tmp_path / "p.parquet")["annotator"].to_list() == ["a\ufffd"]


@pytest.mark.parametrize("value,state", [
    (False, "answered"), (True, "skipped"), ("false", "answered"), ("true", "skipped"), ("False", "answered"),
    (" TRUE ", "skipped"), (0, "answered"), (1, "skipped"), (None, "answered"), ("missing", "answered"),
    ("maybe", "bad"), (2, "bad"), ("", "bad"), ([], "bad"), ({"x": 1}, "bad"), ("yes", "bad"),
])
def test_was_cancelled_is_read_strictly(value, state):
    ann = _ann("u", aid=7, cancelled=value if value != "missing" else None)
    if value is None:
        ann["was_cancelled"] = None
    res = convert_export([_task(3, [ann])], PAIRS)
    prog = progress([_task(3, [ann])])
    if state == "answered":
        assert res.preferences.height == 2 and not res.problems and prog["answered"] == 1
    elif state == "skipped":
        assert res.preferences.height == 0 and res.counts["skipped"] == 1 and not res.problems and prog["skipped"] == 1
    else:
        assert res.preferences.height == 0 and prog["malformed"] == 1 and prog["answered"] == 0
        assert [(p.kind, p.task, p.annotation) for p in res.problems] == [("malformed_annotation", 3, 7)]
        assert "was_cancelled" in str(res.problems[0]) and "not a boolean" in str(res.problems[0])


def test_parse_bool():
    assert [parse_bool(v) for v in (True, False, "true", "false", 0, 1, None, "0", "1")] == \
        [True, False, True, False, False, True, False, False, True]
    assert [parse_bool(v) for v in ("no", 2, -1, 0.5, [], "t")] == [None] * 6


def test_old_style_completions_are_annotations():
    tasks = [
        _task(1, [_ann("u1", aid=1), _ann("u2", aid=2, cancelled=True)], key="completions"),
        {**_task(2, [_ann("u1", "B", "B", aid=3)], pair="p2", key="completions"), "annotations": []},
    ]
    res = convert_export(tasks, PAIRS)
    assert res.preferences.height == 4 and res.counts["answered"] == 2 and res.counts["skipped"] == 1
    assert res.counts["completions_tasks"] == 2
    p = progress(tasks)
    assert (p["tasks_answered"], p["answered"], p["skipped"]) == (2, 2, 1)


@pytest.mark.parametrize("earlier,later", [
    ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.500000Z"),  # as strings "...00Z" sorts after "...00.5..."
    ("2026-01-01T01:00:00+02:00", "2026-01-01T00:30:00Z"),  # 23:00 UTC the day before vs 00:30 UTC
    ("2025-12-31T23:59:59.999999Z", "2026-01-01T00:00:00+00:00"),
    ("2026-01-01T00:00:00", "2026-01-01T00:00:01Z"),  # naive is UTC
])
def test_latest_answer_is_picked_by_time_not_by_string(earlier, later):
    old = _task(1, [_ann("u", "A", "A", aid=50, updated=earlier)])
    new = _task(2, [_ann("u", "B", "B", aid=10, updated=later)])
    for order in ([old, new], [new, old]):
        res = convert_export(order, PAIRS)
        assert res.preferences["label"].to_list() == ["b", "b"], (earlier, later)
        assert res.counts["duplicate"] == 2


def test_created_at_is_utc_iso():
    res = convert_export([_task(1, [_ann("u", created="2026-01-01T02:00:00+02:00")])], PAIRS)
    assert set(res.preferences["created_at"]) == {"2026-01-01T00:00:00Z"}
    res = convert_export([_task(1, [_ann("u", created="yesterday")])], PAIRS)
    assert res.preferences.height == 2 and set(res.preferences["created_at"]) == {"yesterday"}
    assert [(w.kind, w.task) for w in res.warnings] == [("bad_timestamp", 1)]


def test_users_map_with_string_keys_is_one_annotator():
    users = json.loads('{"1": "alice@lab.org", "2": "bob@lab.org"}')  # what a users map read from JSON looks like
    tasks = [
        _task(1, [_ann(1, aid=1), _ann({"id": 2}, aid=2)]),
        _task(2, [_ann({"id": 1, "email": "alice@lab.org"}, aid=3), _ann("2", aid=4)], pair="p2"),
    ]
    res = convert_export(tasks, PAIRS, users=users)
    assert sorted(set(res.preferences["annotator"])) == ["alice@lab.org", "bob@lab.org"]
    assert res.preferences.height == 8
    assert progress(tasks, users)["per_annotator"] == {"alice@lab.org": {"answered": 2, "skipped": 0},
                                                       "bob@lab.org": {"answered": 2, "skipped": 0}}
    # without a users map, an id and the same id with its e-mail elsewhere in the export are one annotator
    res = convert_export([_task(1, [_ann(7, aid=1)]), _task(2, [_ann({"id": 7, "email": "g@lab.org"}, aid=2)], pair="p2")], PAIRS)
    assert set(res.preferences["annotator"]) == {"g@lab.org"}


def test_a_large_hostile_export_keeps_every_valid_answer():
    rng = random.Random(0)
    tasks, valid, valid_first, bad = [], 0, 0, {}
    bad_makers = [
        ("malformed_annotation", lambda a: {**a, "was_cancelled": "perhaps"}),
        ("malformed_annotation", lambda a: {**a, "completed_by": None}),
        ("malformed_annotation", lambda a: {**a, "result": "A"}),
        ("malformed_result", lambda a: {**a, "result": [{"type": "choices", "from_name": "global", "value": {"choices": ["C"]}}]}),
    ]
    for tid in range(3000):
        pair = "p1" if tid % 2 else "p2"
        anns = []
        for k in range(rng.randint(0, 3)):
            aid = tid * 10 + k
            who = rng.choice([1, "2", {"id": 3, "email": "c@lab.org"}, "d\ud800@lab.org", "e@lab.org"]) if k == 0 else f"ann{tid}-{k}"
            a = _ann(who, rng.choice("AB"), rng.choice(["Tie", "Both bad"]), aid=aid,
                     cancelled=rng.choice([False, "false", 0, None]),
                     created=rng.choice(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.250000Z", "2026-01-01T03:00:00+02:00"]),
                     comment=rng.choice([None, "ok", "broken \ud800 mesh"]))
            r = rng.random()
            if r < 0.1:
                kind, make = rng.choice(bad_makers)
                anns.append(make(a))
                bad[aid] = (kind, tid)
            elif r < 0.2:
                anns.append({**a, "was_cancelled": rng.choice([True, "true", 1])})
            else:
                anns.append(a)
                valid += 1
                valid_first += k == 0
        key = "completions" if tid % 7 == 0 else "annotations"
        tasks.append(_task(tid, anns, pair=pair, key=key))
    # the same annotator on the same pair and question in several tasks keeps one answer: give each
    # first annotator of a task its own name so that every valid answer is its own row
    for t in tasks:
        for a in t.get("annotations") or t.get("completions") or []:
            if a["id"] % 10 == 0 and a.get("completed_by") is not None:
                a["completed_by"] = f"first-{a['id']}\ud800"
    export = json.loads(json.dumps(tasks))  # through JSON text, as a file would be
    res = convert_export(export, PAIRS, users={"1": "a@lab.org", "2": "b@lab.org"})
    assert valid > 2000 and len(bad) > 200
    assert res.preferences.height == 2 * valid
    assert sorted((p.annotation, p.kind, p.task) for p in res.problems) == sorted((aid, k, t) for aid, (k, t) in bad.items())
    # every first annotator's name had a lone surrogate: replaced, rows kept
    assert res.preferences.filter(pl.col("annotator").str.starts_with("first-"))["annotator"].str.ends_with("\ufffd").sum() == 2 * valid_first
    str(res.summary()).encode("utf-8")



def test_pull_and_status_count_the_same_annotations_even_on_broken_tasks():
    tasks = [_task(1, [_ann("u")]),
             {**_task(2, [_ann("v"), _ann("w", cancelled=True), _ann("x", cancelled="??")]), "data": {"pair_id": "gone"}},
             {"id": 3, "annotations": [_ann("y")]}]  # no data
    res, prog = convert_export(tasks, PAIRS), progress(tasks)
    assert (res.counts["answered"], res.counts["skipped"], res.counts["malformed"], res.counts["annotations"]) == \
        (prog["answered"], prog["skipped"], prog["malformed"], prog["annotations"]) == (3, 1, 1, 5)
    assert res.preferences.height == 2 and sorted(p.task for p in res.problems) == [2, 3]
