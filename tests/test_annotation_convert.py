"""Label Studio JSON export -> preferences table, on recorded and hand-made export shapes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import polars as pl
import pytest

from rewardkit.annotation import convert_export
from rewardkit.annotation.status import progress
from rewardkit.data import PREFERENCES_SCHEMA

RECORDED = json.loads((Path(__file__).parent / "data" / "labelstudio_export_1.23.2.json").read_text())

PAIRS = pl.DataFrame(
    {"pair_id": ["p1", "p2"], "prompt_id": ["q", "q"], "item_a": ["x", "y"], "item_b": ["y", "z"]}
)


def _choices(q: str, v) -> dict:
    return {"id": "r" + q, "type": "choices", "from_name": q, "to_name": "a_geometry" if q == "global" else "a_rgb",
            "value": {"choices": v if isinstance(v, list) else [v]}}


def _ann(who, results, *, aid=1, lead=5.0, cancelled=False, created="2026-01-01T00:00:00Z", updated=None) -> dict:
    return {"id": aid, "completed_by": who, "result": results, "was_cancelled": cancelled, "lead_time": lead,
            "created_at": created, "updated_at": updated or created}


def _task(pair_id="p1", left="x", right="y", anns=(), tid=1) -> dict:
    return {"id": tid, "data": {"pair_id": pair_id, "prompt": "a chair", "left_item": left, "right_item": right},
            "annotations": list(anns)}


def rows(res) -> list[tuple]:
    return sorted((r["pair_id"], r["question"], r["label"], r["annotator"], r["lead_time_s"]) for r in res.preferences.iter_rows(named=True))


def test_recorded_real_export_row_by_row():
    pairs = pl.DataFrame(RECORDED["pairs"])
    users = {int(k): v for k, v in RECORDED["users"].items()}
    res = convert_export(RECORDED["export"], pairs, users=users)
    assert res.preferences.schema == pl.Schema(PREFERENCES_SCHEMA)
    # p-3424 shown as in the pairs table; p-80b2 shown swapped (left_item = item_b = cow)
    assert rows(res) == sorted([
        ("p-34249a0dd06c6d16", "global", "a", "admin@example.com", 12.5),
        ("p-34249a0dd06c6d16", "local", "tie", "admin@example.com", 12.5),
        ("p-34249a0dd06c6d16", "global", "a", "ann1@example.com", 8.0),
        ("p-34249a0dd06c6d16", "local", "b", "ann1@example.com", 8.0),
        ("p-80b24ebc50d80f4d", "global", "a", "admin@example.com", 20.0),  # B shown on the right = duck = item_a
        ("p-80b24ebc50d80f4d", "local", "both_bad", "admin@example.com", 20.0),
        ("p-80b24ebc50d80f4d", "global", "b", "ann1@example.com", 6.5),  # A shown on the left = cow = item_b
        ("p-80b24ebc50d80f4d", "local", "b", "ann1@example.com", 6.5),
        ("p-ab8a6ac6da848315", "global", "tie", "ann2@example.com", 9.25),
        ("p-ab8a6ac6da848315", "local", "a", "ann2@example.com", 9.25),
    ])
    assert res.counts["tasks"] == 4 and res.counts["annotations"] == 6
    assert res.skipped == {"cancelled": 1}
    assert res.counts["comments"] == 1 and res.counts.get("ignored_result", 0) == 0  # the comment TextArea
    commented = res.preferences.filter(pl.col("comment").is_not_null())
    assert commented.select("pair_id", "annotator").unique().rows() == [("p-34249a0dd06c6d16", "ann1@example.com")]
    assert commented["comment"].to_list() == ["the duck lost its beak"] * 2  # on both questions of that answer
    assert set(res.preferences["source"]) == {"labelstudio"}
    assert all(c.endswith("Z") for c in res.preferences["created_at"])


def test_recorded_export_progress():
    users = {int(k): v for k, v in RECORDED["users"].items()}
    p = progress(RECORDED["export"], users)
    assert (p["tasks"], p["tasks_answered"], p["tasks_skipped"], p["tasks_left"]) == (4, 3, 0, 1)
    assert (p["annotations"], p["answered"], p["skipped"]) == (6, 5, 1)
    assert p["per_annotator"]["ann2@example.com"] == {"answered": 1, "skipped": 1}
    # pull counts the same annotations with the same words
    res = convert_export(RECORDED["export"], pl.DataFrame(RECORDED["pairs"]), users=users)
    assert (res.counts["answered"], res.counts["skipped"], res.counts["tasks"]) == (5, 1, 4)
    assert res.summary() == "10 preference rows from 5 answered annotations (1 skipped) on 4 tasks"


def test_choices_labels_all_four_and_spellings():
    anns = [
        _ann("u1", [_choices("global", "A"), _choices("local", "B")], aid=1),
        _ann("u2", [_choices("global", "Tie"), _choices("local", "Both bad")], aid=2),
        _ann("u3", [_choices("global", "both_bad"), _choices("local", " tie ")], aid=3),
    ]
    res = convert_export([_task(anns=anns)], PAIRS)
    assert rows(res) == sorted([
        ("p1", "global", "a", "u1", 5.0), ("p1", "local", "b", "u1", 5.0),
        ("p1", "global", "tie", "u2", 5.0), ("p1", "local", "both_bad", "u2", 5.0),
        ("p1", "global", "both_bad", "u3", 5.0), ("p1", "local", "tie", "u3", 5.0),
    ])


def test_pairwise_result_maps_left_right_and_needs_a_question():
    pw = lambda sel: {"type": "pairwise", "from_name": "overall", "to_name": "a_rgb,b_rgb", "value": {"selected": sel}}  # noqa: E731
    tasks = [
        _task("p1", "x", "y", [_ann("u1", [pw("left")], aid=1), _ann("u2", [pw("right")], aid=2)], tid=1),
        _task("p2", "z", "y", [_ann("u1", [pw("left")], aid=3)], tid=2),  # swapped: left is item_b
    ]
    res = convert_export(tasks, PAIRS, question_map={"overall": "global"})
    assert rows(res) == sorted([("p1", "global", "a", "u1", 5.0), ("p1", "global", "b", "u2", 5.0), ("p2", "global", "b", "u1", 5.0)])
    # without a mapping for its from_name the pairwise answer cannot be placed: skipped and counted
    res = convert_export(tasks, PAIRS)
    assert res.preferences.height == 0 and res.counts["unknown_question"] == 3


def test_cancelled_and_empty_annotations_are_skipped_and_counted():
    anns = [
        _ann("u1", [_choices("global", "A"), _choices("local", "A")], aid=1, cancelled=True),  # skipped with a result
        _ann("u2", [], aid=2, cancelled=True),
        _ann("u3", [], aid=3),  # empty
        _ann("u4", None, aid=4),  # empty (no result key value)
        _ann("u5", [_choices("global", "B"), _choices("local", "Tie")], aid=5),
    ]
    res = convert_export([_task(anns=anns)], PAIRS)
    assert rows(res) == [("p1", "global", "b", "u5", 5.0), ("p1", "local", "tie", "u5", 5.0)]
    assert res.skipped == {"cancelled": 2, "empty": 2}


def test_several_annotators_are_separate_rows_and_annotator_forms():
    anns = [
        _ann(1, [_choices("global", "A")], aid=1),
        _ann({"id": 2, "email": "two@lab.org"}, [_choices("global", "A")], aid=2),
        _ann(7, [_choices("global", "B")], aid=3),  # unknown user id
        _ann("three@lab.org", [_choices("global", "Tie")], aid=4),
    ]
    res = convert_export([_task(anns=anns)], PAIRS, users={1: "one@lab.org"})
    assert sorted(res.preferences["annotator"]) == ["one@lab.org", "three@lab.org", "two@lab.org", "user:7"]
    assert res.preferences.height == 4 and res.counts.get("duplicate", 0) == 0


def test_swapped_sides_map_back_to_items():
    answers = [_choices("global", "A"), _choices("local", "B")]
    straight = convert_export([_task("p1", "x", "y", [_ann("u", answers)])], PAIRS)
    swapped = convert_export([_task("p1", "y", "x", [_ann("u", answers)])], PAIRS)
    assert rows(straight) == [("p1", "global", "a", "u", 5.0), ("p1", "local", "b", "u", 5.0)]
    assert rows(swapped) == [("p1", "global", "b", "u", 5.0), ("p1", "local", "a", "u", 5.0)]
    sym = convert_export([_task("p1", "y", "x", [_ann("u", [_choices("global", "Tie"), _choices("local", "Both bad")])])], PAIRS)
    assert rows(sym) == [("p1", "global", "tie", "u", 5.0), ("p1", "local", "both_bad", "u", 5.0)]
    # a task without left_item (made by hand) is read in the pairs table's order
    legacy = _task("p1", None, None, [_ann("u", answers)])
    del legacy["data"]["left_item"]
    assert rows(convert_export([legacy], PAIRS)) == rows(straight)


def test_malformed_rows_are_skipped_counted_and_never_fatal():
    good = _task("p2", "y", "z", [_ann("ok", [_choices("global", "A"), _choices("local", "B")], aid=99)], tid=50)
    bad_tasks = [
        "not a task",
        {"id": 2, "annotations": []},  # no data
        {"id": 3, "data": {"prompt": "x"}, "annotations": []},  # no pair_id
        _task("nope", anns=[_ann("u", [_choices("global", "A")])], tid=4),  # pair not in the pairs table
        _task("p1", "w", "y", [_ann("u", [_choices("global", "A")])], tid=5),  # left_item not in the pair
        _task("p1", "x", "x", [_ann("u", [_choices("global", "A")])], tid=8),  # right_item is not the other one
        {"id": 6, "data": {"pair_id": "p1", "left_item": "x"}, "annotations": "oops"},
    ]
    bad_anns = _task("p1", "x", "y", [
        "not an annotation",
        _ann("u1", "not a list", aid=11),
        _ann(None, [_choices("global", "A")], aid=12),  # no annotator
        _ann("u2", ["junk", {"type": "choices", "from_name": "global"}, _choices("local", "C")], aid=13),
        _ann("u3", [_choices("global", ["A", "B"])], aid=14),  # two choices for a single-choice question
        _ann("u4", [{"type": "pairwise", "from_name": "global", "value": {"selected": "none"}}], aid=15),
        _ann("u5", [_choices("global", "A"), _choices("global", "B")], aid=16),  # contradicting itself
        _ann("u6", [_choices("shape", "A")], aid=17),  # unknown question name
    ], tid=7)
    res = convert_export(bad_tasks + [bad_anns, good], PAIRS)
    assert rows(res) == [("p2", "global", "a", "ok", 5.0), ("p2", "local", "b", "ok", 5.0)]
    assert res.skipped == {
        "malformed_task": 6, "unknown_pair": 1, "malformed_annotation": 3, "malformed_result": 5,
        "conflicting_result": 1, "unknown_question": 1,
    }
    assert len(res.problems) == sum(res.skipped.values()) == sum(res.failed.values())
    assert any("task 5" in str(p) and "left_item" in str(p) for p in res.problems)
    assert {p.task for p in res.problems} == {"#0", 2, 3, 4, 5, 8, 6, 7}


def test_same_annotator_twice_keeps_the_latest_answer():
    t1 = _task("p1", "x", "y", [_ann("u", [_choices("global", "A")], aid=1, updated="2026-01-01T00:00:00Z")], tid=1)
    t2 = _task("p1", "y", "x", [_ann("u", [_choices("global", "A")], aid=2, updated="2026-01-02T00:00:00Z")], tid=2)
    res = convert_export([t1, t2], PAIRS)
    assert rows(res) == [("p1", "global", "b", "u", 5.0)]  # the later answer, shown swapped
    assert res.counts["duplicate"] == 1
    res = convert_export([t2, t1], PAIRS)  # order of the export does not matter
    assert rows(res) == [("p1", "global", "b", "u", 5.0)]


@pytest.mark.parametrize("lead,want", [(None, None), (-1, None), ("3", None), (float("nan"), None), (0, 0.0), (2.5, 2.5)])
def test_lead_time(lead, want):
    res = convert_export([_task(anns=[_ann("u", [_choices("global", "A")], lead=lead)])], PAIRS)
    assert res.preferences["lead_time_s"].to_list() == [want]


def test_empty_export_gives_an_empty_valid_table():
    res = convert_export([], PAIRS)
    assert res.preferences.height == 0 and res.preferences.schema == pl.Schema(PREFERENCES_SCHEMA)


def test_input_is_not_mutated():
    tasks = copy.deepcopy(RECORDED["export"])
    convert_export(tasks, pl.DataFrame(RECORDED["pairs"]))
    assert tasks == RECORDED["export"]
