"""Pair sampling: which two candidates of a prompt an annotator compares.

Rules every strategy follows:

- pairs only within a prompt (two candidates of different prompts are never compared);
- no self-pairs and no duplicate pairs ({x, y} and {y, x} are the same pair);
- deterministic under ``seed``: the same items table and seed give the same pairs table, and each
  prompt draws from its own stream (derived from ``seed`` and the ``prompt_id``), so adding a prompt
  does not change the pairs of the others;
- the A/B side is randomized (a fair coin per pair) and recorded in ``item_a`` / ``item_b``; the
  labeling interface shows ``item_a`` as candidate A, and ingestion maps answers back through it.

Strategies:

``all``          every unordered pair of candidates of a prompt: n(n-1)/2 pairs per prompt.
``k_per_prompt`` ``k`` pairs per prompt chosen so that every candidate is shown about equally often
                 (exposure counts differ by at most one whenever that is possible), never repeating
                 a pair. With ``k >= n(n-1)/2`` this is ``all``.

``pair_id`` depends only on the prompt and the unordered pair of items (not on the A/B side or the
seed), so the same comparison keeps its id across re-sampling: ``p-`` + 16 hex digits of a SHA-256.
"""

from __future__ import annotations

import hashlib
import itertools
import random

import polars as pl

from rewardkit.data.tables import PAIRS_SCHEMA, TableError, conform

STRATEGIES = ("all", "k_per_prompt")


def pair_id(prompt_id: str, item_x: str, item_y: str) -> str:
    """Stable id of the unordered pair {item_x, item_y} within ``prompt_id``."""
    lo, hi = sorted((str(item_x), str(item_y)))
    digest = hashlib.sha256(f"{prompt_id}\x1f{lo}\x1f{hi}".encode()).hexdigest()
    return f"p-{digest[:16]}"


def _prompt_rng(seed: int, prompt_id: str) -> random.Random:
    digest = hashlib.sha256(f"{int(seed)}\x1f{prompt_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _all_pairs(items: list[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(items, 2))


def _balanced_pairs(items: list[str], k: int, rng: random.Random) -> list[tuple[str, str]]:
    """``k`` distinct pairs whose exposure counts differ by at most one.

    The degree sequence is fixed first (``2k = n*q + r``: ``r`` randomly chosen candidates are shown
    ``q + 1`` times, the others ``q`` times); such a near-regular sequence is always realizable by a
    simple graph, and Havel-Hakimi builds one (random but seeded tie-breaking).
    """
    n = len(items)
    total = n * (n - 1) // 2
    if k >= total:
        return _all_pairs(items)
    order = list(items)
    rng.shuffle(order)
    rank = {item: i for i, item in enumerate(order)}
    q, r = divmod(2 * k, n)
    need = {item: q + (1 if rank[item] < r else 0) for item in items}
    chosen: list[tuple[str, str]] = []
    while True:
        live = sorted((v for v in order if need[v] > 0), key=lambda v: (-need[v], rank[v]))
        if not live:
            break
        u, rest = live[0], live[1:]
        d = need[u]
        if d > len(rest):  # cannot happen for near-regular sequences; guard anyway
            raise RuntimeError(f"cannot build {k} balanced pairs over {n} candidates")
        for v in rest[:d]:
            chosen.append((u, v))
            need[v] -= 1
        need[u] = 0
    rng.shuffle(chosen)
    return chosen


def sample_pairs(
    items: pl.DataFrame,
    strategy: str = "all",
    *,
    k: int | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """Sample comparison pairs from an ``items`` table (needs ``item_id`` and ``prompt_id``).

    Returns a ``pairs`` table (``pair_id``, ``prompt_id``, ``item_a``, ``item_b``) sorted by prompt
    and then in sampling order. Prompts with fewer than two candidates yield no pairs.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pair strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if strategy == "k_per_prompt" and (k is None or int(k) < 1):
        raise ValueError("strategy 'k_per_prompt' needs k >= 1")
    for col in ("item_id", "prompt_id"):
        if col not in items.columns:
            raise TableError(f"items table is missing column {col!r} (has {items.columns})")
    dup = items.filter(pl.col("item_id").is_duplicated())["item_id"].unique().to_list()
    if dup:
        raise TableError(f"items table has duplicate item_id values {sorted(dup)[:10]}")

    rows: list[dict[str, str]] = []
    by_prompt: dict[str, list[str]] = {}
    for item_id, prompt_id in items.select("item_id", "prompt_id").iter_rows():
        by_prompt.setdefault(str(prompt_id), []).append(str(item_id))
    for prompt_id in sorted(by_prompt):
        cands = sorted(by_prompt[prompt_id])  # input order must not matter
        if len(cands) < 2:
            continue
        rng = _prompt_rng(seed, prompt_id)
        if strategy == "all":
            chosen = _all_pairs(cands)
        else:
            chosen = _balanced_pairs(cands, int(k), rng)
        for x, y in chosen:
            a, b = (x, y) if rng.random() < 0.5 else (y, x)
            rows.append({"pair_id": pair_id(prompt_id, a, b), "prompt_id": prompt_id, "item_a": a, "item_b": b})
    df = pl.DataFrame(rows, schema=PAIRS_SCHEMA) if rows else pl.DataFrame(schema=PAIRS_SCHEMA)
    return conform(df, "pairs")


def exposure(pairs: pl.DataFrame) -> dict[str, int]:
    """How many pairs each item appears in."""
    out: dict[str, int] = {}
    for a, b in pairs.select("item_a", "item_b").iter_rows():
        out[a] = out.get(a, 0) + 1
        out[b] = out.get(b, 0) + 1
    return out


def merge_pairs(existing: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """Add ``new`` pairs to ``existing`` ones, keeping the existing A/B side of pairs already there
    (so re-sampling never flips a pair that annotators may already have answered)."""
    seen = set(existing["pair_id"].to_list())
    extra = new.filter(~pl.col("pair_id").is_in(list(seen)))
    return conform(pl.concat([conform(existing, "pairs"), conform(extra, "pairs")]), "pairs")

