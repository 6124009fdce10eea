"""Active pair selection with the current scorers (the library side of ``rewardkit annotate select`` and of
``pairs.strategy: active``): score every candidate of a pool once with a stage's scorer (an ensemble's
members, or one model), calibrate the Bradley-Terry temperature on the pairs already labelled, and pick the
next K pairs with :func:`rewardkit.data.active.select_pairs`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rewardkit.data.active import (ActiveConfig, all_pool_pairs, fit_temperature, indistinguishable, pair_predictions,
                                   select_pairs)
from rewardkit.data.tables import read_items, read_pairs, read_preferences
from rewardkit.models.losses import LABEL_TARGETS


def stage_model(scorer: Any, stage: str) -> Any:
    """The torch model (StageEnsemble or StageRewardModel) of ``stage`` in a scorer (set) or directory."""
    from rewardkit.scoring import EnsembleScorer, Scorer, ScorerError, ScorerSet, load_scorer

    if isinstance(scorer, (str, Path)):
        scorer = load_scorer(scorer, device="cpu")
    if isinstance(scorer, ScorerSet):
        if stage not in scorer.names():
            raise ScorerError(f"{scorer.source}: no {stage!r} scorer (has {scorer.names()})")
        scorer = scorer[stage]
    if isinstance(scorer, EnsembleScorer):
        return scorer.ensemble.cpu().eval()
    if isinstance(scorer, Scorer):
        return scorer.model.cpu().eval()
    raise ScorerError(f"active selection needs a stage-model or stage-ensemble scorer, got kind {scorer.kind!r}")


def select_next_pairs(scorer: Any, stage: str, items: pl.DataFrame | str | Path, cfg: ActiveConfig, *,
                      pool: pl.DataFrame | str | Path | None = None, labelled_pairs: pl.DataFrame | str | Path | None = None,
                      preferences: pl.DataFrame | str | Path | None = None,
                      render_root: str | Path | None = None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """(selected pairs, summary). ``pool``: candidate pairs (default: every within-prompt pair of ``items``);
    ``labelled_pairs`` + ``preferences``: what is labelled already (never selected again; its ``stage``
    answers calibrate the temperature)."""
    items_path = None if isinstance(items, pl.DataFrame) else Path(items)
    items_df = items if isinstance(items, pl.DataFrame) else read_items(items)
    pool_df = all_pool_pairs(items_df) if pool is None else (pool if isinstance(pool, pl.DataFrame) else read_pairs(pool))
    lab = None if labelled_pairs is None else (
        labelled_pairs if isinstance(labelled_pairs, pl.DataFrame) else read_pairs(labelled_pairs))
    model = stage_model(scorer, stage)
    from rewardkit.train.ensemble import item_member_rewards

    used = set(pool_df["item_a"].to_list()) | set(pool_df["item_b"].to_list())
    if lab is not None:  # labelled pairs of this items table also calibrate (those of earlier rounds' items do not)
        known = set(items_df["item_id"].to_list())
        used |= {x for x in (*lab["item_a"], *lab["item_b"]) if x in known}
    sub = items_df.filter(pl.col("item_id").is_in(list(used)))
    missing = set(pool_df["item_a"].to_list()) | set(pool_df["item_b"].to_list())
    missing -= set(sub["item_id"].to_list())
    if missing:
        raise ValueError(f"pool pairs refer to items not in the items table: {sorted(missing)[:5]}")
    rewards, index = item_member_rewards(model, sub, items_path=items_path, render_root=render_root)
    temperature, n_cal = 1.0, 0
    if lab is not None and preferences is not None:
        prefs = preferences if isinstance(preferences, pl.DataFrame) else read_preferences(preferences)
        rows = prefs.filter((pl.col("question") == stage) & pl.col("label").is_in(["a", "b", "tie"])).join(
            lab.select("pair_id", "item_a", "item_b"), on="pair_id", how="inner").filter(
            pl.col("item_a").is_in(list(index)) & pl.col("item_b").is_in(list(index)))
        if rows.height:
            mean = rewards.mean(0)
            d = [mean[index[a]] - mean[index[b]] for a, b in zip(rows["item_a"], rows["item_b"])]
            temperature = fit_temperature(d, [LABEL_TARGETS[x] for x in rows["label"]])
            n_cal = rows.height
    p_a, dis = pair_predictions(pool_df, rewards, index, temperature)
    same = indistinguishable(pool_df, rewards, index)
    selected = select_pairs(pool_df, p_a, dis if rewards.shape[0] > 1 else None, cfg, labelled=lab, skip=same)
    summary = {"stage": stage, "members": int(rewards.shape[0]), "temperature": temperature,
               "calibration_pairs": n_cal, "pool": pool_df.height,
               "indistinguishable": int(same.sum()), "selected": selected.height,
               "by": {k: int(v) for k, v in selected.group_by("selected_by").len().iter_rows()} if selected.height else {},
               "mean_abs_p_minus_half": float(np.abs(selected["p_a"].to_numpy() - 0.5).mean()) if selected.height else None}
    return selected, summary


__all__ = ["select_next_pairs", "stage_model"]
