"""The stand-in annotator for the policy's samples (rewardkit.rl.annotator): anchors read back from the
written meshes exactly, answers by margin, errors that name the item and its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rewardkit.data.candidates import read_generations
from rewardkit.data.tables import PREFERENCES_SCHEMA
from rewardkit.rl.annotator import AnchorError, AnchorRules, anchor_values, grid_occupancy, label_pairs_by_anchors
from rewardkit.rl.rewards import BUILTIN_REWARDS
from rewardkit.demo.shapes import DEMO_SHAPES, demo_shape, jitter
from rewardkit.rl.tokenizers.base import occupancy_to_mesh

RES = 8


def _write(folder: Path, rows: list[tuple[str, str, np.ndarray]]) -> tuple[pl.DataFrame, dict]:
    """Policy-style candidates (PLY of the voxel surface, candidates.csv) -> (items table, in-memory meshes)."""
    (folder / "m").mkdir(parents=True, exist_ok=True)
    meshes, lines = {}, ["mesh_path,prompt,item_id"]
    for item, prompt, occ in rows:
        mesh = occupancy_to_mesh(occ)
        mesh.export(folder / "m" / f"{item}.ply")
        meshes[item] = mesh
        lines.append(f"m/{item}.ply,{prompt},{item}")
    (folder / "candidates.csv").write_text("\n".join(lines) + "\n")
    items, _ = read_generations(folder)
    return items, meshes


def test_grid_occupancy_reads_back_what_the_policy_wrote(tmp_path):
    """Every demo shape and 20 random jittered/dilated grids: PLY -> bounded loader -> the policy's frame
    -> the same occupancy, voxel for voxel (the loader re-centres and re-scales every mesh)."""
    from rewardkit.io import default_loader
    from rewardkit.rl.annotator import _policy_frame

    rng = np.random.default_rng(0)
    grids = [s.occupancy(RES) for s in DEMO_SHAPES.values()]
    grids += [jitter(grids[i % len(grids)], rng, max_shift=2, p_dilate=0.5) for i in range(20)]
    grids += [rng.random((RES,) * 3) < 0.3 for _ in range(5)]  # holes, islands, touching edges
    for n, occ in enumerate(grids):
        path = tmp_path / f"g{n}.ply"
        occupancy_to_mesh(occ).export(path)
        back = grid_occupancy(_policy_frame(default_loader().load(path)), RES)
        assert np.array_equal(back, occ), (n, int((back != occ).sum()))


def test_anchor_values_equal_the_rewards_of_the_in_memory_meshes(tmp_path):
    """The anchors the annotator computes from the files are the RL run's own reward values."""
    rng = np.random.default_rng(1)
    rows = []
    for shape in ("cube", "sphere", "arch", "table"):
        target = demo_shape(shape).occupancy(RES)
        rows += [(f"{shape}-{k}", demo_shape(shape).prompt, jitter(target, rng, max_shift=1, p_dilate=0.5))
                 for k in range(3)]
    items, meshes = _write(tmp_path, rows)
    vals = anchor_values(items, root=".")
    for item, prompt, _ in rows:
        m = meshes[item]
        iou = BUILTIN_REWARDS["occupancy_iou"](resolution=RES)([m], [prompt])[0]
        local = np.mean([BUILTIN_REWARDS[t](resolution=RES)([m], [prompt])[0] for t in ("surface_f1", "mirror_symmetry")])
        assert vals[item]["global"] == pytest.approx(iou, abs=1e-12)
        assert vals[item]["local"] == pytest.approx(local, abs=1e-12)


def test_answers_follow_the_anchors_with_a_tie_margin_and_noise(tmp_path):
    cyl = demo_shape("cylinder")
    target = cyl.occupancy(RES)
    arch = demo_shape("arch").occupancy(RES)  # the demo's collapse: the cylinder prompt answered with an arch
    shifted = jitter(target, np.random.default_rng(3), max_shift=1)
    items, _ = _write(tmp_path, [("exact", cyl.prompt, target), ("arch", cyl.prompt, arch),
                                 ("exact2", cyl.prompt, target.copy()), ("shifted", cyl.prompt, shifted)])
    pairs = pl.DataFrame({"pair_id": ["p1", "p2", "p3"], "item_a": ["arch", "exact", "exact"],
                          "item_b": ["exact", "exact2", "arch"]})
    prefs = label_pairs_by_anchors(pairs, items, root=".")
    assert prefs.schema == pl.Schema(PREFERENCES_SCHEMA)
    got = {(r["pair_id"], r["question"]): r["label"] for r in prefs.iter_rows(named=True)}
    assert got[("p1", "global")] == "b" and got[("p3", "global")] == "a"  # the target shape beats the arch
    assert got[("p2", "global")] == got[("p2", "local")] == "tie"  # the same shape twice
    assert set(prefs["source"]) == {"synthetic"} and set(prefs["annotator"]) == {"anchor-rules"}
    # a margin wider than every difference makes everything a tie
    wide = label_pairs_by_anchors(pairs, items, AnchorRules(margin=1.0), root=".")
    assert set(wide["label"]) == {"tie"}
    # noise replaces answers (deterministically under a seed), never with the same answer
    big = pl.DataFrame({"pair_id": [f"q{i}" for i in range(200)], "item_a": ["arch"] * 200, "item_b": ["exact"] * 200})
    clean = label_pairs_by_anchors(big, items, root=".", questions=("global",))
    noisy = label_pairs_by_anchors(big, items, root=".", questions=("global",), noise=0.3, seed=5)
    flipped = (clean["label"] != noisy["label"]).mean()
    assert 0.2 < flipped < 0.4 and noisy.equals(label_pairs_by_anchors(big, items, root=".", questions=("global",),
                                                                        noise=0.3, seed=5))


def test_what_the_anchor_rules_cannot_judge_is_named(tmp_path):
    items, _ = _write(tmp_path, [("ok", "a cube", demo_shape("cube").occupancy(RES)),
                                 ("odd", "a weathered statue", demo_shape("cube").occupancy(RES)),
                                 ("broken", "a cube", demo_shape("cube").occupancy(RES))])
    (tmp_path / "m" / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 99999999\n")
    pairs = pl.DataFrame({"pair_id": ["p1", "p2"], "item_a": ["ok", "ok"], "item_b": ["odd", "broken"]})
    with pytest.raises(AnchorError) as exc:
        label_pairs_by_anchors(pairs, items, root=".")
    msg = str(exc.value)
    assert "2 candidate(s)" in msg and "odd (" in msg and "weathered statue" in msg
    assert "broken (" in msg and "broken.ply" in msg
    with pytest.raises(KeyError, match="missing from the items table"):
        label_pairs_by_anchors(pl.DataFrame({"pair_id": ["p"], "item_a": ["ok"], "item_b": ["nope"]}), items)
    with pytest.raises(ValueError, match="unknown anchor"):
        AnchorRules(global_terms=("clip_score",))


def test_stand_in_preferences_pick_the_rules_the_candidates_allow(tmp_path):
    """The label stage's synthetic answers: the policy's samples record no degradations, so ``auto`` answers
    from the anchors, ``degradations`` is a config error naming the way out, an unknown rules value too."""
    from rewardkit.config import ConfigError
    from rewardkit.data import sample_pairs
    from rewardkit.rl.annotator import stand_in_preferences

    rng = np.random.default_rng(0)
    cube = demo_shape("cube")
    _write(tmp_path, [(f"c{k}", cube.prompt, jitter(cube.occupancy(RES), rng, max_shift=1)) for k in range(3)])
    items, cands = read_generations(tmp_path, holdout_fraction=0.0)
    pairs = sample_pairs(items, "all", seed=0)
    prefs = stand_in_preferences(pairs, cands, items, log=lambda _: None)
    assert prefs.height == 2 * pairs.height and set(prefs["question"]) == {"global", "local"}
    assert prefs.equals(label_pairs_by_anchors(pairs, items))
    with pytest.raises(ConfigError, match="anchors"):
        stand_in_preferences(pairs, cands, items, rules="degradations")
    with pytest.raises(ConfigError, match="must be one of"):
        stand_in_preferences(pairs, cands, items, rules="vibes")
