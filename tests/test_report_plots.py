"""The report figures (issue 12, item 7): the data behind them and that they are written. Pixels are
looked at by people; these tests check the numbers each figure shows."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from rewardkit.eval.heldout import accuracy_table, clean_vs_degraded
from rewardkit.eval.plots import plot_accuracy, plot_learning_curves


def _scored() -> pl.DataFrame:
    # two held-out prompts: clean + degraded candidates; "blur" only on p1, "extra_part" nowhere
    rows = [
        ("p1", "clean", "clean", 1.0, 1.0), ("p1", "missing_part", "geometry", 0.2, 0.9),
        ("p1", "blur", "texture", 0.9, 0.3), ("p2", "clean", "clean", 0.5, 0.5),
        ("p2", "missing_part", "geometry", 0.8, 0.5),
    ]
    return pl.DataFrame([{"prompt_id": p, "degradation": d, "kind": k, "global": glo, "local": loc} for p, d, k, glo, loc in rows])


def test_accuracy_table_counts_pairs_and_marks_types_without_pairs(tmp_path):
    scored = _scored()
    per = {s: clean_vs_degraded(scored, s) for s in ("global", "local")}
    t = accuracy_table(per, ["missing_part", "blur", "extra_part"])
    got = {(r["stage"], r["type"]): (r["accuracy"], r["pairs"], r["degradation"]) for r in t.iter_rows(named=True)}
    assert got[("global", "missing_part")] == (0.5, 2, "global: missing_part (n=2)")  # p1 right, p2 wrong
    assert got[("local", "missing_part")] == (0.75, 2, "local: missing_part (n=2)")  # p2 a tie: half credit
    assert got[("global", "blur")] == (1.0, 1, "global: blur (n=1)")
    assert got[("local", "extra_part")] == (None, 0, "local: extra_part (no pairs)")
    # the CSV DVC plots (x: accuracy, y: degradation) keeps the count; no pairs = empty accuracy
    t.write_csv(tmp_path / "acc.csv")
    back = pl.read_csv(tmp_path / "acc.csv")
    assert back.columns[:5] == ["degradation", "stage", "type", "accuracy", "pairs"]
    assert back.filter(pl.col("pairs") == 0)["accuracy"].null_count() == 2
    notes = plot_accuracy(t, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 5000
    assert "global: missing_part: 0.50  n=2" in notes and "extra_part: no pairs" in notes
    assert not any(n.startswith(("global: extra_part", "local: extra_part")) for n in notes)  # no empty bar


def test_learning_curves_mark_the_exported_epoch(tmp_path):
    for stage, best in (("global", 2), ("local", 0)):
        pl.DataFrame({"epoch": [0, 1, 2, 3], "train_loss": [0.7, 0.5, 0.4, 0.35],
                      "val_pairwise_accuracy": [0.6, 0.7, 0.8, 0.75]}).write_csv(tmp_path / f"learning_curve_{stage}.csv")
        (tmp_path / f"train_{stage}.json").write_text(json.dumps({"selected_epoch": best}))
    assert plot_learning_curves(tmp_path / "lc.png", tmp_path) == {"global": 2, "local": 0}
    assert (tmp_path / "lc.png").stat().st_size > 5000
    # a report without the field (an older run) still plots, unmarked
    (tmp_path / "train_local.json").write_text("{}")
    assert plot_learning_curves(tmp_path / "lc2.png", tmp_path) == {"global": 2}


def _groups(n_prompts: int = 2, G: int = 3):
    from rewardkit.demo.shapes import demo_shape
    from rewardkit.rl.tokenizers.base import occupancy_to_mesh
    from rewardkit.rl import GroupRollout, StepSamples

    out = []
    for i, p in enumerate(["a cube", "an arch"][:n_prompts]):
        occ = demo_shape(p).occupancy(4)
        th = {"shape_iou": np.array([0.1, 0.2, 0.3]) + i, "global_scorer": np.array([1.0, np.nan, 3.0])}
        tl = {"surface_f1": np.array([0.5, 0.6, 0.7]), "symmetry": np.array([0.9, 0.8, 0.7])}
        meshes = [occupancy_to_mesh(occ), None, occupancy_to_mesh(occ)]
        out.append(GroupRollout(prompt=p, steps={
            "global": StepSamples(sequences=[], meshes=meshes, reward=th["shape_iou"] + 0.5 * th["global_scorer"], terms=th),
            "local": StepSamples(sequences=[], meshes=meshes, reward=tl["surface_f1"] + tl["symmetry"], terms=tl)}))
    return out


def test_rl_sample_grid_labels_columns_and_shows_each_samples_terms(tmp_path):
    from rewardkit.reporting.sample_grid import plot_sample_grid

    weights = {"global": {"shape_iou": 1.0, "global_scorer": 0.5}, "local": {"surface_f1": 1.0, "symmetry": 1.0}}
    data = plot_sample_grid(_groups(), tmp_path / "grid.png", max_samples=2, render_size=48, weights=weights, render=False)
    assert (tmp_path / "grid.png").stat().st_size > 5000
    assert data["columns"] == ["sample 1 · global: coarse shape", "sample 1 · local: refined",
                               "sample 2 · global: coarse shape", "sample 2 · local: refined"]
    assert data["rows"] == ["a cube", "an arch"] and len(data["cells"]) == 2 * 2 * 2
    c = {(x["prompt"], x["sample"], x["step"]): x for x in data["cells"]}
    assert c[("an arch", 1, 1)]["reward_name"] == "global reward" and c[("an arch", 1, 1)]["reward"] == pytest.approx(1.1 + 0.5)
    assert c[("an arch", 1, 1)]["terms"]["global_scorer"] == {"value": 1.0, "weight": 0.5}
    assert c[("a cube", 2, 1)]["terms"]["global_scorer"]["value"] is None and c[("a cube", 2, 1)]["reward"] is None  # failed
    assert c[("a cube", 2, 2)]["empty_mesh"] and c[("a cube", 2, 2)]["terms"]["symmetry"]["value"] == 0.8
    assert c[("a cube", 1, 2)]["reward_name"] == "local reward" and math.isclose(c[("a cube", 1, 2)]["reward"], 1.4)


def test_rl_evaluation_records_the_grid_data(tmp_path):
    from rewardkit.rl.policy import build_tiny_policy
    from rewardkit.rl.rewards import RewardTerm, StepReward, occupied_fraction
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    build_tiny_policy(tmp_path / "policy", ["plan", "fill", "detail"], codebook_size=2, tokens_per_object=8,
                      hidden_size=16, num_layers=1, num_heads=2, seed=0)
    cfg = HiGRPOConfig.from_dict(dict(
        policy_path=str(tmp_path / "policy"), tokens_per_object=8,
        shape_tokenizer={"type": "voxel_blocks", "resolution": 2, "block": 1}, prompts=["fill"],
        step1_template="plan {prompt}", step2_template="detail {prompt} {plan}", sampling={"max_reasoning_tokens": 1},
        group_size=2, prompts_per_step=1, steps=0, output_dir=str(tmp_path / "run"), save_every=0,
        eval_group_size=2, render=False, accelerator="cpu", num_threads=1, seed=0))
    rew = StepReward([RewardTerm("occupied", occupied_fraction(2), weight=2.0)])
    trainer = HiGRPOTrainer(cfg, rewards_global=rew, rewards_local=rew)
    trainer.evaluate("samples_after")
    grid = json.loads((tmp_path / "run" / "samples_after" / "samples.json").read_text())["grid"]
    assert grid["rows"] == ["fill"] and grid["samples_per_prompt"] == 2
    assert {(x["sample"], x["step"]) for x in grid["cells"]} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert all(x["terms"]["occupied"]["weight"] == 2.0 and x["reward"] == pytest.approx(2.0 * x["terms"]["occupied"]["value"])
               for x in grid["cells"])
