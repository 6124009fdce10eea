"""Held-out evaluation of exported scorers, from Python on any items table (no DVC needed).

::

    from rewardkit.eval import heldout
    scores = heldout.score_items(scorers, items)             # {stage: np.ndarray}, from the render folders
    scored = items.with_columns([pl.Series(k, v) for k, v in scores.items()])
    rows = heldout.clean_vs_degraded(scored, "global")       # one row per (prompt, degraded candidate)
    heldout.stage_report("global", rows, train_report={})    # owned / other-stage / per-degradation accuracy
    heldout.preference_report(scored, pairs, preferences)    # agreement with annotators' answers

``clean_vs_degraded`` needs the candidates' ``degradation`` and ``kind`` columns (the demo's candidates
table, :mod:`rewardkit.data.candidates`); ``preference_report`` needs only the items, pairs and preferences
tables (:mod:`rewardkit.data.tables`), so it evaluates a lab's own annotated generations too. The pipeline's
``evaluate`` stage (pipelines/evaluate.py) is a thin caller of these functions and of :mod:`rewardkit.eval.plots`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import torch

from rewardkit.eval.metrics import preference_metrics
from rewardkit.models.losses import LABEL_TARGETS

OWNS = {"global": "geometry", "local": "texture"}  # the degradation kind each stage should notice
TIE_EPS = 1e-6
STAGES = ("global", "local")


def load_view_tensor(render_dir: str, mode: str) -> torch.Tensor:
    """The views of one mode from a render folder as a float tensor [V, 3, H, W] in [0, 1]."""
    from rewardkit.render import load_views
    from rewardkit.scoring.core import views_to_tensor

    return views_to_tensor(load_views(render_dir, mode)).float() / 255.0


def score_items(scorers: Any, items: pl.DataFrame, batch: int = 32) -> dict[str, np.ndarray]:
    """Scores per scorer of every item (``render_dir``, ``prompt`` columns), from its render folder (no
    re-rendering). ``scorers``: a :class:`~rewardkit.scoring.ScorerSet`, a scorer or a scorer directory."""
    from rewardkit.scoring import as_scorer_set

    scorers = as_scorer_set(scorers)
    modes = sorted({m for _, s in scorers.items() for m in s.modes})
    out: dict[str, list[float]] = {k: [] for k in scorers.names()}
    rows = items.select("render_dir", "prompt").rows()
    for i in range(0, len(rows), batch):
        chunk = rows[i: i + batch]
        views = {m: torch.stack([load_view_tensor(r, m) for r, _ in chunk]) for m in modes}
        res = scorers.score_views(views, [p for _, p in chunk])
        for k, o in res.items():
            out[k].extend(o.tolist())
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def clean_vs_degraded(scored: pl.DataFrame, stage: str) -> pl.DataFrame:
    """One row per (held-out prompt, degraded candidate): did ``stage`` score the clean one higher?

    Only candidates with a recorded degradation count (``kind`` not ``unknown``), against a clean
    candidate of the same prompt; a lab's own generations without recorded degradations give no rows.
    """
    scored = scored.filter(pl.col("kind") != "unknown")
    clean = scored.filter(pl.col("degradation") == "clean").select("prompt_id", pl.col(stage).alias("clean_score"))
    deg = scored.filter(pl.col("degradation") != "clean").join(clean, on="prompt_id")
    diff = deg[stage] - deg["clean_score"]
    credit = np.where(np.abs(diff.to_numpy()) <= TIE_EPS, 0.5, (diff.to_numpy() < 0).astype(float))
    return deg.with_columns(pl.Series("credit", credit), (pl.col("clean_score") - pl.col(stage)).alias("margin"))


def kind_accuracy(rows: pl.DataFrame, kinds: list[str]) -> float | None:
    """Mean credit of the :func:`clean_vs_degraded` rows whose degradation ``kind`` is in ``kinds``."""
    sel = rows.filter(pl.col("kind").is_in(kinds))
    return round(float(sel["credit"].mean()), 4) if sel.height else None


def stage_report(stage: str, rows: pl.DataFrame, train_report: dict[str, Any]) -> dict[str, Any]:
    """One stage's figures: its validation figures from training (``train_report``, the training summary
    JSON) and, from the :func:`clean_vs_degraded` rows, accuracy on the degradations it owns, on the other
    stage's (should sit near chance) and per degradation type."""
    owned, other = OWNS[stage], OWNS["local" if stage == "global" else "global"]
    groups = list(rows.group_by("degradation", maintain_order=True))
    per_deg = {d: round(float(g["credit"].mean()), 4) for (d,), g in groups}
    return {
        "val_accuracy": train_report.get("val_pairwise_accuracy"),
        "val_tie_band_accuracy": train_report.get("val_tie_band_accuracy"),
        "val_ece": train_report.get("val_ece"),
        "disentanglement": train_report.get("disentanglement_accuracy"),
        "holdout_owned_accuracy": kind_accuracy(rows, [owned, "both"]),
        "holdout_other_accuracy": kind_accuracy(rows, [other]),
        "holdout_pairs": rows.height,
        "accuracy_by_degradation": per_deg,
        "pairs_by_degradation": {d: int(g.height) for (d,), g in groups},  # the counts behind each accuracy
    }


def accuracy_table(per_stage_rows: dict[str, pl.DataFrame], degradations: list[str]) -> pl.DataFrame:
    """One row per stage x degradation type: ``degradation`` (the plot's label: stage, type and the number
    of pairs, or "no pairs"), ``stage``, ``type``, ``accuracy`` (null without pairs) and ``pairs`` (the
    held-out clean-vs-degraded pairs behind it). ``reports/accuracy_by_degradation.csv``."""
    out = []
    for stage in STAGES:
        rows = per_stage_rows[stage]
        for d in degradations:
            g = rows.filter(pl.col("degradation") == d) if rows.height else rows
            n = int(g.height)
            acc = round(float(g["credit"].mean()), 4) if n else None
            label = f"{stage}: {d} (n={n})" if n else f"{stage}: {d} (no pairs)"
            out.append({"degradation": label, "stage": stage, "type": d, "accuracy": acc, "pairs": n})
    return pl.DataFrame(out, schema={"degradation": pl.Utf8, "stage": pl.Utf8, "type": pl.Utf8,
                                     "accuracy": pl.Float64, "pairs": pl.Int64})


def preference_report(scored: pl.DataFrame, pairs: pl.DataFrame, preferences: pl.DataFrame,
                      stages: Any = STAGES, **metric_kw: Any) -> dict[str, dict[str, Any]]:
    """How well the scores agree with annotators: per stage (a column of ``scored`` holding each item's
    score, keyed by ``item_id``), :func:`rewardkit.eval.metrics.preference_metrics` over the answers to the
    question of the same name (``a`` / ``b`` / ``tie``; ``both_bad`` answers are left out, as in training).
    Stages without answers get ``{"n_pairs": 0}``. ``metric_kw`` goes to ``preference_metrics``."""
    out: dict[str, dict[str, Any]] = {}
    for stage in stages:
        s = scored.select("item_id", pl.col(stage).alias("score"))
        rows = (preferences.filter((pl.col("question") == stage) & pl.col("label").is_in(["a", "b", "tie"]))
                .join(pairs.select("pair_id", "item_a", "item_b"), on="pair_id", how="inner")
                .join(s.rename({"item_id": "item_a", "score": "score_a"}), on="item_a", how="inner")
                .join(s.rename({"item_id": "item_b", "score": "score_b"}), on="item_b", how="inner"))
        if rows.height == 0:
            out[stage] = {"n_pairs": 0}
            continue
        delta = (rows["score_a"] - rows["score_b"]).to_numpy()
        target = rows["label"].replace_strict(LABEL_TARGETS, return_dtype=pl.Float64).to_numpy()  # as in training
        out[stage] = preference_metrics(delta, target, **metric_kw)
    return out


def evaluate_heldout(scorers: Any, items: pl.DataFrame, train_reports: dict[str, dict[str, Any]] | None = None,
                     batch: int = 32) -> tuple[dict[str, Any], pl.DataFrame, dict[str, pl.DataFrame]]:
    """Score held-out ``items`` (with the candidates' ``degradation`` and ``kind`` columns) with the
    global/local ``scorers`` and build the report: ``(report, scored items, clean-vs-degraded rows per
    stage)``; ``report[stage]`` is :func:`stage_report`, plus ``holdout_prompts`` and ``holdout_candidates``."""
    train_reports = train_reports or {}
    scores = score_items(scorers, items, batch=batch)
    scored = items.with_columns([pl.Series(k, v) for k, v in scores.items()])
    report: dict[str, Any] = {}
    per_stage_rows = {}
    for stage in STAGES:
        rows = clean_vs_degraded(scored, stage)
        per_stage_rows[stage] = rows
        report[stage] = stage_report(stage, rows, train_reports.get(stage, {}))
    report["holdout_prompts"] = int(items["prompt_id"].n_unique())
    report["holdout_candidates"] = int(items.height)
    return report, scored, per_stage_rows


__all__ = ["OWNS", "STAGES", "TIE_EPS", "accuracy_table", "clean_vs_degraded", "evaluate_heldout",
           "kind_accuracy", "load_view_tensor", "preference_report", "score_items", "stage_report"]
