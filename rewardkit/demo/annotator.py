"""A rule-based stand-in annotator for the demo data set.

It answers the two questions of the labeling interface from what the generator recorded, not from the
renders: the *global* question from the candidates' geometry degradations, the *local* question from
their texture degradations. A candidate without a degradation of that kind beats one with it; two
candidates alike in that respect (both clean, or both degraded) are a ``tie``. With ``noise > 0`` each
answer is, with that probability, replaced by one of the two other answers (uniformly), like a careless
annotator. Rows carry ``source="synthetic"``: they stand in for human labels, they are not human labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from rewardkit.data.tables import PREFERENCES_SCHEMA, conform
from rewardkit.errors import RewardkitError

ANNOTATOR = "demo-rules"
SOURCE = "synthetic"
CREATED_AT = "2026-01-01T00:00:00+00:00"  # fixed, so the same inputs give a byte-identical table
ANSWERS = ("a", "b", "tie")


class UnrecordedDegradation(RewardkitError, ValueError):
    """Paired candidates whose degradations are not recorded (a lab's own generations): no rule applies."""


def degraded(name: str | None) -> int:
    """1 when ``name`` is a degradation, 0 for ``none``/empty."""
    return 0 if name in (None, "", "none", "clean") else 1


def rule_label(deg_a: str | None, deg_b: str | None) -> str:
    """The preferred side given the two candidates' degradations of the question's kind."""
    sa, sb = degraded(deg_a), degraded(deg_b)
    if sa == sb:
        return "tie"
    return "a" if sa < sb else "b"


def flip_answer(label: str, rng: np.random.Generator) -> str:
    """One of the two other answers, uniformly (a careless annotator's mistake)."""
    others = [x for x in ANSWERS if x != label]
    return others[int(rng.integers(len(others)))]


def label_pairs(
    pairs: pl.DataFrame,
    candidates: pl.DataFrame,
    *,
    noise: float = 0.0,
    seed: int = 0,
    questions: tuple[str, ...] = ("global", "local"),
    annotator: str = ANNOTATOR,
) -> pl.DataFrame:
    """A ``preferences`` table: one row per pair and question.

    ``candidates`` needs ``item_id``, ``geometry_degradation`` and ``texture_degradation`` (the demo
    generator's sidecar table). Pairs whose items are not in it raise ``KeyError``.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    column = {"global": "geometry_degradation", "local": "texture_degradation"}
    for q in questions:
        if q not in column:
            raise ValueError(f"unknown question {q!r}; known: {list(column)}")
    table = {r["item_id"]: r for r in candidates.select("item_id", *column.values()).iter_rows(named=True)}
    missing = sorted({i for i in pairs["item_a"].to_list() + pairs["item_b"].to_list() if i not in table})
    if missing:
        raise KeyError(f"pairs refer to items missing from the candidates table: {missing[:10]}")
    unknown = sorted({i for i in pairs["item_a"].to_list() + pairs["item_b"].to_list()
                      if any(table[i][column[q]] is None for q in questions)})
    if unknown:
        raise UnrecordedDegradation(f"{len(unknown)} paired candidate(s) have no recorded {' / '.join(column[q] for q in questions)} "
                         f"(the rules need them; human labels do not): {unknown[:10]}")
    return answer_pairs(pairs, questions, lambda a, b, q: rule_label(table[a][column[q]], table[b][column[q]]),
                        noise=noise, seed=seed, stream=7, annotator=annotator)


def answer_pairs(pairs: pl.DataFrame, questions: tuple[str, ...], rule: Callable[[str, str, str], str], *,
                 noise: float, seed: int, stream: int, annotator: str) -> pl.DataFrame:
    """The ``preferences`` table of a rule-based annotator: ``rule(item_a, item_b, question)`` answers each
    pair and question, and with probability ``noise`` the answer is replaced (:func:`flip_answer`; the
    random stream is ``SeedSequence([seed, stream])``, so the same inputs give the same table)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    rows = []
    for pid, a, b in pairs.select("pair_id", "item_a", "item_b").iter_rows():
        for q in questions:
            label = rule(a, b, q)
            if noise > 0 and rng.random() < noise:
                label = flip_answer(label, rng)
            rows.append({"pair_id": pid, "question": q, "label": label, "annotator": annotator,
                         "lead_time_s": 0.0, "created_at": CREATED_AT, "source": SOURCE})
    if not rows:
        return pl.DataFrame(schema=PREFERENCES_SCHEMA)
    return conform(pl.DataFrame(rows), "preferences")


def probe_pairs(pairs: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """Pairs that differ in one kind only: ``pair_id``, ``differs_in`` (``texture`` | ``geometry``).

    Two candidates with the same geometry degradation and different texture degradations differ only in
    texture (the global stage should be blind to them), and the other way round. These are the
    disentanglement probes of ``rewardkit.train`` (``TrainConfig.probes``).
    """
    table = {r["item_id"]: (r["geometry_degradation"], r["texture_degradation"])
             for r in candidates.select("item_id", "geometry_degradation", "texture_degradation").iter_rows(named=True)}
    rows = []
    for pid, a, b in pairs.select("pair_id", "item_a", "item_b").iter_rows():
        if a not in table or b not in table:
            continue
        (ga, ta), (gb, tb) = table[a], table[b]
        if None in (ga, ta, gb, tb):  # not known (a lab's own generations): no probe
            continue
        if ga == gb and ta != tb:
            rows.append({"pair_id": pid, "differs_in": "texture"})
        elif ta == tb and ga != gb:
            rows.append({"pair_id": pid, "differs_in": "geometry"})
    return pl.DataFrame(rows, schema={"pair_id": pl.Utf8, "differs_in": pl.Utf8})
