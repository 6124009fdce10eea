"""Active pair selection: the next K pairs to label, where the current reward models are least sure.

From a pool of candidate pairs (``pair_id, prompt_id, item_a, item_b``) and each pair's predicted
preference under the current scorer, :func:`select_pairs` picks K pairs in three parts:

- ``random``: a ``random_fraction`` of K drawn uniformly from the pool (kept for an unbiased estimate of
  accuracy: the actively chosen pairs are by construction the hard ones);
- ``uncertainty``: the pairs whose **calibrated** Bradley-Terry probability ``P(a > b) = sigmoid((r_a -
  r_b) / T)`` is closest to 0.5 (``T`` fitted on the already-labelled pairs by :func:`fit_temperature`);
- ``disagreement`` (with an ensemble): the pairs whose members disagree most on the preference, measured
  as the std over members of each member's ``P(a > b)``; its share is ``disagreement_fraction``.

The two criteria skip **pairs the current scorers cannot tell apart at all** (:func:`indistinguishable`:
every member gives both items the same reward, because the stage's input is the same for both, e.g. two
candidates that differ only in texture for the global stage, which reads geometry renders). Their
probability is exactly 0.5 and their disagreement 0, so uncertainty sampling would pick them first, yet
the stage's answer to them is a tie by construction and teaches it nothing. The random part may still draw
them (it estimates accuracy on the pool as it is).

Every part respects a per-prompt cap (``per_prompt_cap`` selected pairs per prompt), balances exposure
(among equally good pairs, those whose items have been shown least, counting the labelled pairs, win:
the criterion is penalised by ``exposure_weight`` per earlier appearance), never returns a pair that is
already labelled (by ``pair_id``, which depends only on the prompt and the unordered items) and is
deterministic under ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from rewardkit.data.pairs import pair_id as make_pair_id


@dataclass
class ActiveConfig:
    """``pairs.active`` in params.yaml / the options of ``rewardkit annotate select``."""

    k: int = 60  # pairs to select
    random_fraction: float = 0.2  # share of K drawn uniformly (unbiased evaluation)
    disagreement_fraction: float = 0.3  # share of K by ensemble disagreement (needs members; else uncertainty)
    per_prompt_cap: int = 4  # at most this many selected pairs per prompt
    exposure_weight: float = 0.02  # criterion penalty per earlier appearance of each of the pair's items
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 0 or self.per_prompt_cap < 1:
            raise ValueError("active.k must be >= 0 and active.per_prompt_cap >= 1")
        if not (0 <= self.random_fraction <= 1 and 0 <= self.disagreement_fraction <= 1
                and self.random_fraction + self.disagreement_fraction <= 1):
            raise ValueError("active.random_fraction and active.disagreement_fraction must be in [0, 1] with a sum <= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def fit_temperature(deltas: Sequence[float], targets: Sequence[float]) -> float:
    """The temperature T minimising the Bradley-Terry NLL of ``sigmoid(delta / T)`` on labelled pairs
    (targets 1 / 0 / 0.5 for a / b / tie); 1.0 with no labelled pair. A 1-D search over log T."""
    d, t = np.asarray(deltas, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(t)
    d, t = d[ok], t[ok]
    if len(d) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = np.clip(sigmoid(d / math.exp(log_t)), 1e-7, 1 - 1e-7)
        return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean())

    grid = np.linspace(math.log(1e-2), math.log(1e3), 141)
    best = grid[int(np.argmin([nll(x) for x in grid]))]
    lo, hi = best - 0.1, best + 0.1  # refine by golden-section search around the grid's best
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def all_pool_pairs(items: pl.DataFrame) -> pl.DataFrame:
    """Every unordered within-prompt pair of ``items`` (item_id, prompt_id) as a pool (sorted sides)."""
    rows = []
    for (prompt_id,), g in items.sort("item_id").group_by("prompt_id", maintain_order=True):
        ids = g["item_id"].to_list()
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                rows.append({"pair_id": make_pair_id(prompt_id, ids[i], ids[j]), "prompt_id": prompt_id,
                             "item_a": ids[i], "item_b": ids[j]})
    return pl.DataFrame(rows, schema={"pair_id": pl.Utf8, "prompt_id": pl.Utf8, "item_a": pl.Utf8, "item_b": pl.Utf8})


def _sides(pool: pl.DataFrame, item_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The columns of each pool pair's two items in a rewards matrix."""
    return (np.array([item_index[x] for x in pool["item_a"]], dtype=np.int64),
            np.array([item_index[x] for x in pool["item_b"]], dtype=np.int64))


def pair_predictions(pool: pl.DataFrame, member_rewards: np.ndarray, item_index: dict[str, int],
                     temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pool pair: the calibrated ``P(a > b)`` of the members' mean reward, and the std over members of
    each member's ``P(a > b)`` (0 for one member). ``member_rewards`` [N, items]."""
    r = np.atleast_2d(np.asarray(member_rewards, dtype=np.float64))
    ia, ib = _sides(pool, item_index)
    deltas = r[:, ia] - r[:, ib]  # [N, P]
    p_mean = sigmoid(deltas.mean(0) / temperature)
    p_members = sigmoid(deltas / temperature)
    disagreement = p_members.std(0) if r.shape[0] > 1 else np.zeros(len(ia))
    return p_mean, disagreement


def indistinguishable(pool: pl.DataFrame, member_rewards: np.ndarray, item_index: dict[str, int],
                      rtol: float = 1e-6) -> np.ndarray:
    """Per pool pair: True where every member gives both items the same reward (within ``rtol`` of the
    rewards' scale), i.e. the scorers see the same input for both: a pair the criteria of
    :func:`select_pairs` skip."""
    r = np.atleast_2d(np.asarray(member_rewards, dtype=np.float64))
    ia, ib = _sides(pool, item_index)
    scale = max(1.0, float(np.abs(r).max())) if r.size else 1.0
    return np.abs(r[:, ia] - r[:, ib]).max(0) <= rtol * scale if len(ia) else np.zeros(0, dtype=bool)


def select_pairs(pool: pl.DataFrame, p_a: Sequence[float], disagreement: Sequence[float] | None,
                 cfg: ActiveConfig, *, labelled: pl.DataFrame | Iterable[str] | None = None,
                 skip: Sequence[bool] | None = None) -> pl.DataFrame:
    """The K selected pairs of ``pool`` (its columns plus ``selected_by``: random | uncertainty |
    disagreement, ``p_a`` and ``disagreement``), in selection order. ``labelled``: a pairs table (its
    ``pair_id`` s and item exposure count) or pair ids that must not be selected again. ``skip``: per pool
    pair, True where the criteria must not pick it (:func:`indistinguishable`); the random part ignores it."""
    p_a = np.asarray(p_a, dtype=np.float64)
    dis = np.zeros(len(p_a)) if disagreement is None else np.asarray(disagreement, dtype=np.float64)
    no_crit = np.zeros(len(p_a), dtype=bool) if skip is None else np.asarray(skip, dtype=bool)
    if len(p_a) != pool.height or len(dis) != pool.height or len(no_crit) != pool.height:
        raise ValueError(f"{len(p_a)} predictions / {len(dis)} disagreements / {len(no_crit)} skip flags for a pool "
                         f"of {pool.height} pairs")
    exposure: dict[str, int] = {}
    done: set[str] = set()
    if isinstance(labelled, pl.DataFrame):
        done = set(labelled["pair_id"].to_list())
        for col in ("item_a", "item_b"):
            if col in labelled.columns:
                for x in labelled[col]:
                    exposure[x] = exposure.get(x, 0) + 1
    elif labelled is not None:
        done = set(labelled)
    pids = pool["pair_id"].to_list()
    prompts = pool["prompt_id"].to_list()
    a_items, b_items = pool["item_a"].to_list(), pool["item_b"].to_list()
    free = np.array([pid not in done for pid in pids], dtype=bool)
    # one pair id once (a pool may list a pair twice, e.g. with swapped sides)
    first: dict[str, int] = {}
    for i, pid in enumerate(pids):
        if free[i] and pid in first:
            free[i] = False
        elif free[i]:
            first[pid] = i
    rng = np.random.default_rng(cfg.seed)
    tiebreak = rng.random(len(pids)) * 1e-9
    per_prompt: dict[str, int] = {}
    chosen: list[tuple[int, str]] = []
    n_free = int(free.sum())
    k = min(cfg.k, n_free)
    n_random = int(round(cfg.random_fraction * k))
    has_members = disagreement is not None and bool(np.any(dis > 0))
    n_dis = int(round(cfg.disagreement_fraction * k)) if has_members else 0
    n_unc = k - n_random - n_dis

    def eligible(i: int) -> bool:
        return bool(free[i]) and per_prompt.get(prompts[i], 0) < cfg.per_prompt_cap

    def take(i: int, why: str) -> None:
        free[i] = False
        per_prompt[prompts[i]] = per_prompt.get(prompts[i], 0) + 1
        for x in (a_items[i], b_items[i]):
            exposure[x] = exposure.get(x, 0) + 1
        chosen.append((i, why))

    # random part: a uniform draw (the cap still holds)
    for i in rng.permutation(len(pids)):
        if sum(1 for _, w in chosen if w == "random") >= n_random:
            break
        if eligible(int(i)):
            take(int(i), "random")
    # the criteria, greedy: lowest cost first, the cost penalised by the items' exposure so far
    for why, n, base in (("disagreement", n_dis, -dis), ("uncertainty", n_unc, np.abs(p_a - 0.5))):
        for _ in range(n):
            cost = np.array([base[i] + cfg.exposure_weight * (exposure.get(a_items[i], 0) + exposure.get(b_items[i], 0))
                             + tiebreak[i] if eligible(i) and not no_crit[i] else np.inf for i in range(len(pids))])
            if not np.isfinite(cost).any():
                break
            take(int(np.argmin(cost)), why)
    idx = [i for i, _ in chosen]
    out = pool[idx] if idx else pool.head(0)
    return out.with_columns(pl.Series("selected_by", [w for _, w in chosen], dtype=pl.Utf8),
                            pl.Series("p_a", [float(p_a[i]) for i in idx], dtype=pl.Float64),
                            pl.Series("disagreement", [float(dis[i]) for i in idx], dtype=pl.Float64))


__all__ = ["ActiveConfig", "all_pool_pairs", "fit_temperature", "indistinguishable", "pair_predictions", "select_pairs",
           "sigmoid"]
