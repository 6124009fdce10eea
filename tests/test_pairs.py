"""Pair sampling: within prompts, all pairs / k per prompt with balanced exposure, seeded, A/B randomized."""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from rewardkit.data import PAIRS_SCHEMA, TableError, exposure, merge_pairs, pair_id, sample_pairs


def make_items(sizes: dict[str, int]) -> pl.DataFrame:
    rows = [{"item_id": f"{p}-{i}", "prompt_id": p} for p, n in sizes.items() for i in range(n)]
    return pl.DataFrame(rows)


def unordered(df: pl.DataFrame) -> list[frozenset]:
    return [frozenset((a, b)) for a, b in df.select("item_a", "item_b").iter_rows()]


def check_invariants(items: pl.DataFrame, pairs: pl.DataFrame) -> None:
    assert pairs.schema == pl.Schema(PAIRS_SCHEMA)
    prompt = dict(items.select("item_id", "prompt_id").iter_rows())
    for pid, p, a, b in pairs.select("pair_id", "prompt_id", "item_a", "item_b").iter_rows():
        assert a != b  # no self-pairs
        assert prompt[a] == prompt[b] == p  # only within a prompt
        assert pid == pair_id(p, a, b) == pair_id(p, b, a)
    u = unordered(pairs)
    assert len(u) == len(set(u))  # no duplicates, in either order
    assert pairs["pair_id"].n_unique() == pairs.height


def test_all_pairs_counts_and_invariants():
    items = make_items({"chair": 4, "mug": 3, "lamp": 1, "car": 2})
    pairs = sample_pairs(items, "all", seed=0)
    check_invariants(items, pairs)
    counts = dict(pairs.group_by("prompt_id").len().iter_rows())
    assert counts == {"chair": 6, "mug": 3, "car": 1}  # n(n-1)/2; a lone candidate gets no pair
    want = {frozenset(c) for p in ("chair", "mug", "car") for c in itertools.combinations(items.filter(pl.col("prompt_id") == p)["item_id"], 2)}
    assert set(unordered(pairs)) == want


@pytest.mark.parametrize("n", range(2, 11))
def test_k_per_prompt_balanced_exposure_for_every_k(n):
    items = make_items({"p": n})
    total = n * (n - 1) // 2
    for k in range(1, total + 3):
        for seed in (0, 1):
            pairs = sample_pairs(items, "k_per_prompt", k=k, seed=seed)
            check_invariants(items, pairs)
            assert pairs.height == min(k, total)
            e = exposure(pairs)
            counts = [e.get(i, 0) for i in items["item_id"]]
            assert max(counts) - min(counts) <= 1, (n, k, seed, counts)


def test_k_per_prompt_is_per_prompt():
    items = make_items({"a": 6, "b": 5, "c": 2})
    pairs = sample_pairs(items, "k_per_prompt", k=4, seed=3)
    check_invariants(items, pairs)
    assert dict(pairs.group_by("prompt_id").len().iter_rows()) == {"a": 4, "b": 4, "c": 1}


def test_deterministic_under_seed_and_input_order():
    items = make_items({"a": 7, "b": 5})
    p1 = sample_pairs(items, "k_per_prompt", k=9, seed=11)
    p2 = sample_pairs(items.reverse(), "k_per_prompt", k=9, seed=11)
    assert p1.equals(p2)
    p3 = sample_pairs(items, "k_per_prompt", k=9, seed=12)
    assert not p1.equals(p3)
    assert sample_pairs(items, "all", seed=5).equals(sample_pairs(items.sample(fraction=1.0, shuffle=True, seed=1), "all", seed=5))


def test_adding_a_prompt_keeps_the_other_prompts_pairs():
    base = make_items({"a": 6})
    more = pl.concat([base, make_items({"b": 4})])
    pa = sample_pairs(base, "k_per_prompt", k=5, seed=0)
    pb = sample_pairs(more, "k_per_prompt", k=5, seed=0).filter(pl.col("prompt_id") == "a")
    assert pa.equals(pb)


def test_ab_side_is_randomized_and_recorded():
    items = make_items({"p": 30})
    pairs = sample_pairs(items, "all", seed=0)
    # item ids sort as p-0 < p-1 < ...; a fair coin puts the smaller id on side A about half the time
    first_is_a = sum(int(a.split("-")[1]) < int(b.split("-")[1]) for a, b in pairs.select("item_a", "item_b").iter_rows())
    assert 0.4 * pairs.height < first_is_a < 0.6 * pairs.height
    # the side depends on the seed, the pair id does not
    other = sample_pairs(items, "all", seed=1)
    assert set(other["pair_id"]) == set(pairs["pair_id"])
    assert pairs.sort("pair_id")["item_a"].to_list() != other.sort("pair_id")["item_a"].to_list()


def test_merge_keeps_existing_sides():
    items = make_items({"p": 5})
    old = sample_pairs(items, "k_per_prompt", k=3, seed=0)
    new = sample_pairs(items, "all", seed=99)
    merged = merge_pairs(old, new)
    assert merged.height == 10
    old_sides = {r["pair_id"]: (r["item_a"], r["item_b"]) for r in old.iter_rows(named=True)}
    for r in merged.iter_rows(named=True):
        if r["pair_id"] in old_sides:
            assert (r["item_a"], r["item_b"]) == old_sides[r["pair_id"]]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown pair strategy"):
        sample_pairs(make_items({"p": 3}), "random")
    with pytest.raises(ValueError, match="k >= 1"):
        sample_pairs(make_items({"p": 3}), "k_per_prompt")
    with pytest.raises(TableError, match="duplicate item_id"):
        sample_pairs(pl.DataFrame({"item_id": ["x", "x"], "prompt_id": ["p", "p"]}), "all")
    with pytest.raises(TableError, match="prompt_id"):
        sample_pairs(pl.DataFrame({"item_id": ["x"]}), "all")
    empty = sample_pairs(make_items({"p": 1}), "all")
    assert empty.height == 0 and empty.schema == pl.Schema(PAIRS_SCHEMA)
