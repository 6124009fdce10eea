"""Rounds of the loop (rewardkit.data.rounds): hand-over accumulates every round's labelled data with its
renders, training joins it, and what cannot be handed over is named. Real renders of the shared meshes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from rewardkit.data.rounds import HandOverError, hand_over, with_previous_rounds
from rewardkit.data.tables import conform, read_items, read_pairs, read_preferences, write_table

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@pytest.fixture(scope="module")
def render_folder(tmp_path_factory):
    """One real render folder (a shared mesh, 2 views of 32²), copied per item below."""
    from rewardkit.render import render_to_dir

    meshes = sorted(Path(__file__).resolve().parents[2].joinpath("shared", "meshes").rglob("*.glb"))
    assert meshes, "the shared meshes are missing"
    out = tmp_path_factory.mktemp("renders") / "one"
    render_to_dir(meshes[0], out, protocol="30:20,210:20", modes=("rgb",), size=32)
    assert (out / "meta.json").is_file()
    return out


def _round(root: Path, tag: str, render_folder: Path, sha: str = "s") -> Path:
    """A finished round's data folder: 4 items of one prompt, 3 labelled pairs, scorers/, rl/candidates/."""
    import shutil

    data = root / "data"
    (data / "renders").mkdir(parents=True)
    items = []
    for i in range(4):
        shutil.copytree(render_folder, data / "renders" / f"{tag}{i}")
        items.append({"item_id": f"{tag}{i}", "prompt_id": "p", "prompt": "a cube", "mesh_path": f"m/{tag}{i}.glb",
                      "mesh_sha256": f"{sha}{tag}{i}", "generator": tag, "seed": i,
                      "render_dir": f"data/renders/{tag}{i}"})
    write_table(conform(pl.DataFrame(items), "items"), data / "items.parquet", "items")
    pairs = pl.DataFrame({"pair_id": [f"{tag}-01", f"{tag}-12", f"{tag}-23"], "prompt_id": ["p"] * 3,
                          "item_a": [f"{tag}0", f"{tag}1", f"{tag}2"], "item_b": [f"{tag}1", f"{tag}2", f"{tag}3"]})
    write_table(pairs, data / "pairs.parquet", "pairs")
    prefs = pl.DataFrame([{"pair_id": pid, "question": q, "label": "a", "annotator": "x", "lead_time_s": 1.0,
                           "created_at": "2026-01-01", "source": "synthetic"}
                          for pid in pairs["pair_id"] for q in ("global", "local")])
    write_table(conform(prefs, "preferences"), data / "preferences.parquet", "preferences")
    (data / "scorers").mkdir()
    (data / "scorers" / "config.json").write_text(json.dumps({"format": "rewardkit.scorer_set", "round": tag}))
    (data / "rl" / "candidates").mkdir(parents=True)
    (data / "rl" / "candidates" / "candidates.csv").write_text(f"mesh_path,prompt\n{tag}.ply,a cube\n")
    return data


def test_hand_over_accumulates_rounds_with_their_renders(tmp_path, render_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r1 = _round(tmp_path / "r1", "a", render_folder)
    prev = tmp_path / "prev"
    e1 = hand_over(r1, prev)
    assert e1 == {"round": 1, "from": str(r1), "pairs": 3, "preferences": 6, "items": 4, "candidates": True,
                  "total_pairs": 3}
    items = read_items(prev / "items.parquet")
    assert items["render_dir"].to_list() == [str(prev / "renders" / f"a{i}") for i in range(4)]
    assert all((Path(d) / "meta.json").is_file() for d in items["render_dir"])
    # round 2: new items; the scorers and candidates are replaced, the labelled data added
    r2 = _round(tmp_path / "r2", "b", render_folder)
    e2 = hand_over(r2, prev)
    assert e2["round"] == 2 and e2["total_pairs"] == 6
    assert read_pairs(prev / "pairs.parquet").height == 6 and read_preferences(prev / "preferences.parquet").height == 12
    assert json.loads((prev / "scorers" / "config.json").read_text())["round"] == "b"
    assert (prev / "candidates" / "candidates.csv").read_text().startswith("mesh_path,prompt\nb.ply")
    assert [r["round"] for r in json.loads((prev / "rounds.json").read_text())] == [1, 2]
    # the same round twice adds no answers
    hand_over(r2, prev)
    assert read_preferences(prev / "preferences.parquet").height == 12
    # training joins them: the current round's rows win, earlier answers all kept
    cur_items, cur_pairs, cur_prefs = (read_items(r2 / "items.parquet"), read_pairs(r2 / "pairs.parquet"),
                                       read_preferences(r2 / "preferences.parquet"))
    items, pairs, prefs, stats = with_previous_rounds(cur_items, cur_pairs, cur_prefs, prev)
    assert stats == {"previous_pairs": 3, "previous_preferences": 12}
    assert pairs.height == 6 and items.height == 8 and prefs.height == 12
    assert items.filter(pl.col("item_id") == "b0")["render_dir"].item() == "data/renders/b0"  # the current one
    # nothing handed over: unchanged
    same = with_previous_rounds(cur_items, cur_pairs, cur_prefs, tmp_path / "none")
    assert same[1].equals(cur_pairs) and same[3] == {"previous_pairs": 0, "previous_preferences": 0}


def test_what_cannot_be_handed_over_is_named(tmp_path, render_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prev = tmp_path / "prev"
    with pytest.raises(HandOverError, match="not a finished round.*preferences.parquet"):
        r0 = _round(tmp_path / "r0", "z", render_folder)
        (r0 / "preferences.parquet").unlink()
        hand_over(r0, prev)
    r1 = _round(tmp_path / "r1", "a", render_folder)
    hand_over(r1, prev)
    clash = _round(tmp_path / "r2", "a", render_folder, sha="other")  # same ids, other meshes
    with pytest.raises(HandOverError, match=r"item ids \['a0', 'a1', 'a2', 'a3'\] name other meshes"):
        hand_over(clash, prev)
    r3 = _round(tmp_path / "r3", "c", render_folder)
    import shutil

    shutil.rmtree(r3.parent / "data" / "renders" / "c2")
    with pytest.raises(HandOverError, match="item 'c2': render folder data/renders/c2 has no meta.json"):
        hand_over(r3, prev)


def test_the_cli_hands_over(tmp_path, render_folder, monkeypatch):
    from rewardkit.cli import main

    monkeypatch.chdir(tmp_path)
    _round(tmp_path, "a", render_folder)  # tmp_path/data
    res = CliRunner().invoke(main, ["annotate", "hand-over"])
    assert res.exit_code == 0, res.output
    assert "round 1 handed over to data/previous_round: 3 pairs, 6 answers, 4 items" in res.output
    res = CliRunner().invoke(main, ["annotate", "hand-over", "--data", str(tmp_path / "absent")])
    assert res.exit_code == 2
