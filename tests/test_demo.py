"""The procedural demo: determinism, valid GLBs for every category and degradation, the annotator's rules."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from rewardkit.demo import (
    CATEGORIES,
    GEOMETRY,
    TEXTURE,
    DemoConfig,
    generate,
    kind_of,
    label_pairs,
    make_candidate,
    read_candidates,
    rule_label,
    sample_spec,
)
from rewardkit.demo.generate import glb_bytes, prompt_specs
from rewardkit.demo.objects import build_atlas, build_parts


def _spec(category: str, seed: int = 0):
    return sample_spec(category, np.random.default_rng(seed))


def test_prompt_says_colour_material_and_category():
    spec = _spec("chair", 3)
    assert spec.colour in spec.prompt and spec.material in spec.prompt and "chair" in spec.prompt
    assert spec.prompt.startswith(("a ", "an "))


def test_generator_is_deterministic(tmp_path):
    cfg = DemoConfig(prompts_per_category=1, holdout_per_category=1, categories=("mug", "car"), mixed=1, seed=5)
    items1, cands1 = generate(cfg, tmp_path / "one")
    items2, cands2 = generate(cfg, tmp_path / "two")
    assert items1["mesh_sha256"].to_list() == items2["mesh_sha256"].to_list()
    assert items1["prompt"].to_list() == items2["prompt"].to_list()
    assert cands1.equals(cands2)
    for row in items1.iter_rows(named=True):
        data = open(row["mesh_path"], "rb").read()
        assert hashlib.sha256(data).hexdigest() == row["mesh_sha256"]
    other = generate(DemoConfig(prompts_per_category=1, holdout_per_category=1, categories=("mug", "car"), mixed=1,
                                seed=6), tmp_path / "three")[0]
    assert other["mesh_sha256"].to_list() != items1["mesh_sha256"].to_list()


def test_tables_and_splits(tmp_path):
    cfg = DemoConfig(prompts_per_category=2, holdout_per_category=1, categories=("chair", "lamp"), mixed=2)
    items, cands = generate(cfg, tmp_path)
    per_prompt = 1 + len(GEOMETRY) + len(TEXTURE) + 2
    assert items.height == 6 * per_prompt
    assert read_candidates(tmp_path / "candidates.parquet")["item_id"].to_list() == items["item_id"].to_list()
    assert set(cands["split"]) == {"train", "holdout"}
    assert cands.filter(pl.col("split") == "holdout")["prompt_id"].n_unique() == 2
    clean = cands.filter(pl.col("degradation") == "clean")
    assert clean.height == 6 and set(clean["kind"]) == {"none"}
    assert set(cands["kind"]) == {"none", "geometry", "texture", "both"}
    for row in cands.iter_rows(named=True):
        assert row["kind"] == kind_of(row["degradation"])
    # the prompts of a category are distinct
    assert items.group_by("prompt_id").agg(pl.col("prompt").first())["prompt"].n_unique() == 6


def test_factorial_design_makes_texture_independent_of_shape_in_candidates_and_labels():
    """Training prompts: every combination of {none + 2 geometry} x {none + 2 texture}, the types rotated so
    each is used; held-out prompts keep the single design (clean vs each type). The decided answers of each
    question are then not predictable from the other kind's degradation (the confound of the single design:
    its local winners are geometry-degraded far more often than its losers)."""
    from rewardkit.data.pairs import sample_pairs
    from rewardkit.demo.generate import candidate_plan

    def confound(cfg: DemoConfig) -> dict[str, tuple[float, float]]:
        rows = []
        for prompt_id, spec, split in prompt_specs(cfg):
            if split != "train":
                continue
            for g, t in candidate_plan(cfg, spec.seed, split, int(prompt_id.rsplit("-", 1)[1])):
                name = "+".join(n for n in (g, t) if n != "none") or "clean"
                rows.append({"item_id": f"{prompt_id}-{name}", "prompt_id": prompt_id,
                             "geometry_degradation": g, "texture_degradation": t})
        cands = pl.DataFrame(rows)
        pairs = sample_pairs(cands.select("item_id", "prompt_id"), strategy="k_per_prompt", k=10, seed=0)
        prefs = label_pairs(pairs, cands).join(pairs, on="pair_id")
        other = {"global": "texture_degradation", "local": "geometry_degradation"}
        deg = {r["item_id"]: r for r in cands.iter_rows(named=True)}
        out = {}
        for q, col in other.items():
            decided = prefs.filter((pl.col("question") == q) & (pl.col("label") != "tie"))
            win = [deg[a if lab == "a" else b][col] != "none" for a, b, lab in decided.select("item_a", "item_b", "label").iter_rows()]
            lose = [deg[b if lab == "a" else a][col] != "none" for a, b, lab in decided.select("item_a", "item_b", "label").iter_rows()]
            out[q] = (float(np.mean(win)), float(np.mean(lose)))
        return out

    cfg = DemoConfig(design="factorial", factorial_geometry=2, factorial_texture=2)
    specs = prompt_specs(cfg)
    train = [(p, s) for p, s, split in specs if split == "train"]
    used_g, used_t = set(), set()
    for prompt_id, spec in train:
        plan = candidate_plan(cfg, spec.seed, "train", int(prompt_id.rsplit("-", 1)[1]))
        gs, ts = {g for g, _ in plan}, {t for _, t in plan}
        assert len(plan) == 9 and len(gs) == 3 and len(ts) == 3 and set(plan) == {(g, t) for g in gs for t in ts}
        used_g |= gs
        used_t |= ts
    assert used_g == {"none", *GEOMETRY} and used_t == {"none", *TEXTURE}
    holdout = [s for p, s, split in specs if split == "holdout"]
    assert candidate_plan(cfg, holdout[0].seed, "holdout") == candidate_plan(DemoConfig(), holdout[0].seed, "holdout")
    for q, (win, lose) in confound(cfg).items():
        assert abs(win - lose) < 0.1, (q, win, lose)  # the other kind says nothing about who wins
    single = confound(DemoConfig(design="single"))
    assert single["local"][0] - single["local"][1] > 0.3 and single["global"][0] - single["global"][1] > 0.3
    with pytest.raises(ValueError, match="factorial_texture"):
        DemoConfig(design="factorial", factorial_texture=9)
    with pytest.raises(ValueError, match="unknown design"):
        DemoConfig(design="grid")


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_and_degradation_loads_with_rewardkit_io(category, tmp_path):
    from rewardkit.io import load_mesh

    spec = _spec(category, 11)
    clean = make_candidate(spec)
    cases = [("none", "none")] + [(g, "none") for g in GEOMETRY] + [("none", t) for t in TEXTURE]
    for g, t in cases:
        cand = make_candidate(spec, g, t, np.random.default_rng(1))
        path = tmp_path / f"{category}-{g}-{t}.glb"
        path.write_bytes(glb_bytes(cand.mesh))
        loaded = load_mesh(path)
        verts = np.concatenate([m.vertices for m in loaded.geometries])
        assert np.isfinite(verts).all() and len(loaded.geometries) >= 1
        assert sum(len(m.faces) for m in loaded.geometries) > 0
        assert np.abs(verts).max() <= 0.5 + 1e-6
        if t == "none":  # the atlas survives a GLB round trip; texture_removed leaves a flat colour
            assert cand.mesh.visual.kind == "texture"
        if g == "none" and t != "none":  # texture degradations keep the shape exactly
            assert np.array_equal(cand.mesh.vertices, clean.mesh.vertices)
        if g != "none":  # geometry degradations change the shape and keep the texture image
            assert cand.mesh.vertices.shape != clean.mesh.vertices.shape or not np.allclose(
                cand.mesh.vertices, clean.mesh.vertices)
            assert np.array_equal(np.asarray(cand.mesh.visual.material.baseColorTexture),
                                  np.asarray(clean.mesh.visual.material.baseColorTexture))


def test_texture_degradations_change_the_atlas():
    spec = _spec("car", 2)
    atlas = build_atlas(spec)
    for t in ("wrong_colour", "texture_noise", "blur"):
        img = np.asarray(make_candidate(spec, "none", t, np.random.default_rng(0)).mesh.visual.material.baseColorTexture)
        assert np.abs(img.astype(int) - atlas.astype(int)).mean() > 5, t
    assert make_candidate(spec, "none", "texture_removed").mesh.visual.kind != "texture"
    # the wrong colour is far from the prompted one, the blurred pattern has much less contrast
    blurred = np.asarray(make_candidate(spec, "none", "blur").mesh.visual.material.baseColorTexture)
    assert blurred[:, :128].std(axis=(0, 1)).mean() < 0.5 * atlas[:, :128].std(axis=(0, 1)).mean()


def test_missing_and_extra_part_change_the_part_count():
    from rewardkit.demo import degrade

    for cat in CATEGORIES:
        spec = _spec(cat, 4)
        parts = build_parts(spec)
        rng = np.random.default_rng(0)
        assert len(degrade.missing_part(parts, cat, rng)) < len(parts)
        assert len(degrade.extra_part(parts, rng)) == len(parts) + 1


def test_holdout_prompts_differ_from_training_prompts():
    specs = prompt_specs(DemoConfig(prompts_per_category=4, holdout_per_category=2))
    train = {s.prompt for _, s, split in specs if split == "train"}
    hold = {s.prompt for _, s, split in specs if split == "holdout"}
    assert not train & hold


def test_rule_label_and_ties():
    assert rule_label("none", "none") == "tie"
    assert rule_label("vertex_noise", "missing_part") == "tie"
    assert rule_label("none", "blur") == "a"
    assert rule_label("wrong_colour", "none") == "b"


def _pairs_and_cands():
    cands = pl.DataFrame({
        "item_id": ["c", "g", "t", "gt"],
        "geometry_degradation": ["none", "missing_part", "none", "vertex_noise"],
        "texture_degradation": ["none", "none", "blur", "wrong_colour"],
    })
    pairs = pl.DataFrame({
        "pair_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
        "prompt_id": ["x"] * 6,
        "item_a": ["c", "g", "c", "t", "g", "gt"],
        "item_b": ["g", "t", "t", "gt", "gt", "c"],
    })
    return pairs, cands


def test_annotator_rules_per_question():
    pairs, cands = _pairs_and_cands()
    prefs = label_pairs(pairs, cands)
    got = {(r["pair_id"], r["question"]): r["label"] for r in prefs.iter_rows(named=True)}
    expected = {
        ("p1", "global"): "a", ("p1", "local"): "tie",  # clean vs geometry-degraded
        ("p2", "global"): "b", ("p2", "local"): "a",  # geometry vs texture: the questions disagree
        ("p3", "global"): "tie", ("p3", "local"): "a",  # clean vs texture-degraded
        ("p4", "global"): "a", ("p4", "local"): "tie",  # both texture-degraded
        ("p5", "global"): "tie", ("p5", "local"): "a",
        ("p6", "global"): "b", ("p6", "local"): "b",  # sides swapped
    }
    assert got == expected
    assert set(prefs["source"]) == {"synthetic"}
    assert prefs.columns == ["pair_id", "question", "label", "annotator", "lead_time_s", "created_at", "source", "comment"]
    assert prefs["comment"].null_count() == prefs.height  # synthetic labels carry no comment


def test_annotator_noise_rate_and_determinism():
    n = 4000
    cands = pl.DataFrame({"item_id": ["c", "g"], "geometry_degradation": ["none", "extra_part"],
                          "texture_degradation": ["none", "none"]})
    pairs = pl.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "prompt_id": ["x"] * n,
                          "item_a": ["c"] * n, "item_b": ["g"] * n})
    clean = label_pairs(pairs, cands)
    noisy = label_pairs(pairs, cands, noise=0.2, seed=3)
    assert noisy.equals(label_pairs(pairs, cands, noise=0.2, seed=3))
    changed = (clean["label"] != noisy["label"]).mean()
    assert 0.17 < changed < 0.23  # 2n answers, binomial sd ~0.006
    assert set(noisy["label"]) <= {"a", "b", "tie"}
    with pytest.raises(ValueError):
        label_pairs(pairs, cands, noise=1.5)
    with pytest.raises(KeyError):
        label_pairs(pairs.with_columns(pl.lit("zzz").alias("item_b")), cands)


def test_cli_generate_and_label(tmp_path):
    from click.testing import CliRunner

    from rewardkit.cli import main
    from rewardkit.data.pairs import sample_pairs
    from rewardkit.data.tables import read_items, read_preferences, write_table

    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "generate", "--out", str(out), "--prompts-per-category", "1",
                                  "--holdout-per-category", "0", "--categories", "bottle", "--mixed", "0"])
    assert r.exit_code == 0, r.output
    items = read_items(out / "items.parquet")
    assert items.height == 1 + len(GEOMETRY) + len(TEXTURE)
    write_table(sample_pairs(items, "all"), tmp_path / "pairs.parquet", "pairs")
    r = CliRunner().invoke(main, ["demo", "label", "--pairs", str(tmp_path / "pairs.parquet"), "--candidates",
                                  str(out / "candidates.parquet"), "--out", str(tmp_path / "prefs.parquet")])
    assert r.exit_code == 0, r.output
    prefs = read_preferences(tmp_path / "prefs.parquet")
    assert prefs.height == 2 * items.height * (items.height - 1) // 2
