"""The report of a finished reward-model training run, as the pipeline's ``train_<stage>`` stages write it:
``train_<stage>.json`` (the validation metrics, with ``selected_epoch``: the epoch whose checkpoint was
exported) and ``learning_curve_<stage>.csv`` (one row per epoch; ``selected`` marks that epoch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl


def learning_curve_rows(metrics_csv: str | Path) -> list[dict[str, Any]]:
    """One row per epoch: epoch, step, train_loss, val_bt_loss, val_pairwise_accuracy (from Lightning's CSV)."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.exists():
        return []
    df = pl.read_csv(metrics_csv, infer_schema_length=None)
    if "epoch" not in df.columns:
        return []
    cols = {"train/loss_epoch": "train_loss", "val/bt_loss": "val_bt_loss",
            "val/pairwise_accuracy": "val_pairwise_accuracy", "val/tie_band_accuracy": "val_tie_band_accuracy"}
    rows = []
    for (epoch,), g in df.group_by("epoch", maintain_order=True):
        row: dict[str, Any] = {"epoch": int(epoch), "step": int(g["step"].max())}
        for src, dst in cols.items():
            vals = g[src].drop_nulls() if src in g.columns else []
            row[dst] = round(float(vals[-1]), 6) if len(vals) else None
        rows.append(row)
    return rows


def train_report(stage: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The figures DVC shows of one run's ``metrics`` (:attr:`rewardkit.train.TrainResult.metrics`)."""
    val = metrics.get("val") or {}
    dis = metrics.get("disentanglement") or {}
    return {
        "stage": stage,
        "val_pairwise_accuracy": val.get("pairwise_accuracy"),
        "val_tie_band_accuracy": val.get("tie_band_accuracy"),
        "val_ece": val.get("ece"),
        "val_ece_calibrated": val.get("ece_calibrated"),
        "val_bt_loss": val.get("bt_loss"),
        "disentanglement_accuracy": dis.get("accuracy"),
        "disentanglement_pairs": dis.get("n_pairs"),
        "epochs": metrics.get("epochs"),
        "selected_epoch": metrics.get("selected_epoch"),  # the epoch whose checkpoint was exported (best by monitor)
        "selected_weights": metrics.get("weights"),
        "fit_seconds": metrics.get("fit_seconds"),
        **extra,
    }


def write_train_report(stage: str, metrics: dict[str, Any], run_dir: str | Path, reports_dir: str | Path,
                       **extra: Any) -> dict[str, Any]:
    """Write ``train_<stage>.json`` and ``learning_curve_<stage>.csv`` into ``reports_dir`` for the run in
    ``run_dir``; ``extra``: more figures for the JSON. Returns the JSON's dict."""
    reports_dir = Path(reports_dir)
    report = train_report(stage, metrics, **extra)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / f"train_{stage}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = learning_curve_rows(Path(run_dir) / "logs" / "csv" / "version_0" / "metrics.csv")
    curve = pl.DataFrame(rows) if rows else pl.DataFrame(schema={"epoch": pl.Int64, "train_loss": pl.Float64,
                                                                   "val_pairwise_accuracy": pl.Float64})
    sel = pl.lit(report["selected_epoch"], dtype=pl.Int64)
    curve = curve.with_columns((pl.col("epoch") == sel).fill_null(False).alias("selected"))
    curve.write_csv(reports_dir / f"learning_curve_{stage}.csv")
    return report


__all__ = ["learning_curve_rows", "train_report", "write_train_report"]
