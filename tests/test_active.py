"""Active pair selection (issue 18, item 3): uncertainty (calibrated Bradley-Terry probability near 0.5),
ensemble disagreement, a random share, per-prompt caps, exposure balance, no labelled pair, determinism;
and ``rewardkit annotate select`` on real renders with a real trained ensemble (tests/test_ensemble.py)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from rewardkit.data.active import (
    ActiveConfig,
    all_pool_pairs,
    fit_temperature,
    indistinguishable,
    pair_predictions,
    select_pairs,
)


def _pool(n_prompts=6, n_items=5):
    items = pl.DataFrame({"item_id": [f"p{p}-i{i}" for p in range(n_prompts) for i in range(n_items)],
                          "prompt_id": [f"p{p}" for p in range(n_prompts) for i in range(n_items)]})
    return items, all_pool_pairs(items)


def test_temperature_recovers_the_scale_of_simulated_labels():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 3, 4000)
    t = (rng.random(4000) < 1 / (1 + np.exp(-d / 2.5))).astype(float)
    assert fit_temperature(d, t) == pytest.approx(2.5, rel=0.15)
    assert fit_temperature([], []) == 1.0


def test_selection_parts_caps_exposure_no_labelled_and_determinism():
    items, pool = _pool()
    assert pool.height == 6 * 10
    rng = np.random.default_rng(1)
    members = rng.normal(0, 2, (4, items.height))
    index = {x: i for i, x in enumerate(items["item_id"])}
    p, dis = pair_predictions(pool, members, index, 1.0)
    labelled = pool.head(5)
    cfg = ActiveConfig(k=20, random_fraction=0.25, disagreement_fraction=0.25, per_prompt_cap=4, seed=3)
    sel = select_pairs(pool, p, dis, cfg, labelled=labelled)
    assert sel.height == 20
    assert sel["selected_by"].value_counts().sort("selected_by").rows() == [
        ("disagreement", 5), ("random", 5), ("uncertainty", 10)]
    assert not set(sel["pair_id"]) & set(labelled["pair_id"])
    assert sel["pair_id"].n_unique() == 20
    assert sel.group_by("prompt_id").len()["len"].max() <= 4
    # the uncertainty part is the closest to 0.5 among the free pairs (up to the exposure penalty)
    unc = sel.filter(pl.col("selected_by") == "uncertainty")
    free = pool.with_columns(pl.Series("p", p)).filter(~pl.col("pair_id").is_in(sel["pair_id"].to_list() + labelled["pair_id"].to_list()))
    assert np.abs(unc["p_a"].to_numpy() - 0.5).mean() < np.abs(free["p"].to_numpy() - 0.5).mean()
    # the disagreement part has the largest member spread
    assert sel.filter(pl.col("selected_by") == "disagreement")["disagreement"].min() >= np.median(dis)
    # deterministic under a seed, different under another
    again = select_pairs(pool, p, dis, cfg, labelled=labelled)
    assert again.equals(sel)
    other = select_pairs(pool, p, dis, ActiveConfig(**{**cfg.to_dict(), "seed": 4}), labelled=labelled)
    assert set(other.filter(pl.col("selected_by") == "random")["pair_id"]) != set(
        sel.filter(pl.col("selected_by") == "random")["pair_id"])


def test_exposure_balance_spreads_ties_over_items():
    _items, pool = _pool(n_prompts=1, n_items=6)
    p = np.full(pool.height, 0.5)  # every pair equally uncertain: exposure decides
    sel = select_pairs(pool, p, None, ActiveConfig(k=3, random_fraction=0, per_prompt_cap=10, exposure_weight=0.1))
    shown = [*sel["item_a"], *sel["item_b"]]
    assert len(set(shown)) == 6  # three pairs, six different items
    with pytest.raises(ValueError):
        ActiveConfig(random_fraction=0.8, disagreement_fraction=0.5)
    with pytest.raises(ValueError, match="predictions"):
        select_pairs(pool, p[:-1], None, ActiveConfig())


def test_criteria_skip_pairs_the_scorers_cannot_tell_apart():
    # items 0-2 of each prompt share their stage input (as texture-only variants do for the global stage):
    # every member scores them alike, so their pairs sit at exactly p = 0.5 with no disagreement
    items, pool = _pool(n_prompts=4, n_items=6)
    rng = np.random.default_rng(2)
    members = rng.normal(0, 2, (3, items.height))
    for p in range(4):
        members[:, 6 * p + 1] = members[:, 6 * p + 2] = members[:, 6 * p] + 1e-9
    index = {x: i for i, x in enumerate(items["item_id"])}
    same = indistinguishable(pool, members, index)
    twins = {f"p{p}-i{i}" for p in range(4) for i in range(3)}
    assert same.tolist() == [a in twins and b in twins for a, b in zip(pool["item_a"], pool["item_b"])]
    assert same.sum() == 4 * 3
    p, dis = pair_predictions(pool, members, index, 1.0)
    cfg = ActiveConfig(k=12, random_fraction=0.0, disagreement_fraction=0.25, per_prompt_cap=6)
    naive = select_pairs(pool, p, dis, cfg)
    assert (naive["p_a"] == 0.5).sum() >= 4  # without the flag, uncertainty goes for them first
    sel = select_pairs(pool, p, dis, cfg, skip=same)
    assert sel.height == 12 and not set(sel["pair_id"]) & set(pool.filter(pl.Series(same))["pair_id"])
    # the random part still draws from the whole pool
    rand = select_pairs(pool, p, dis, ActiveConfig(k=pool.height, random_fraction=1.0, disagreement_fraction=0.0, per_prompt_cap=100), skip=same)
    assert rand.height == pool.height
    with pytest.raises(ValueError, match="skip flags"):
        select_pairs(pool, p, dis, cfg, skip=same[:-1])


def test_without_members_disagreement_falls_back_to_uncertainty():
    _items, pool = _pool()
    p = np.linspace(0.01, 0.99, pool.height)
    sel = select_pairs(pool, p, None, ActiveConfig(k=10, random_fraction=0.0, disagreement_fraction=0.5))
    assert set(sel["selected_by"]) == {"uncertainty"} and sel.height == 10
    assert all(math.isfinite(x) for x in sel["p_a"])
