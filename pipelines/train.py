"""Stages ``train_global`` and ``train_local``: ``python -m pipelines.train global|local``.

The run's TrainConfig is ``train.common`` of params.yaml, overridden by ``train.<stage>``, with the data
paths of this pipeline. Writes the run under ``data/models/<stage>/`` (model, checkpoints, logs) and a
small report for DVC: ``reports/train_<stage>.json`` (metrics, with ``selected_epoch``: the epoch whose
checkpoint was exported) and ``reports/learning_curve_<stage>.csv`` (one row per epoch; ``selected`` marks
that epoch).

With ``devices: N`` and ``strategy: ddp`` in ``train.common`` Lightning re-runs this script once per extra
device during the fit, after rank 0 has cleared the run folder and written the training tables: only rank 0
prepares the folder and writes the reports (launching the stage with torchrun or on several machines is not
supported; use ``rewardkit train`` there, docs/scale.md).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pipelines._common import ITEMS, MODELS_DIR, PAIRS, PREFERENCES, PROBES, REPORTS_DIR, chdir_root, params, step


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def learning_curve_rows(metrics_csv: Path) -> list[dict[str, Any]]:
    """One row per epoch: epoch, step, train_loss, val_bt_loss, val_pairwise_accuracy (from Lightning's CSV)."""
    import polars as pl

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


def _with_previous_rounds(previous: Path, folder: Path, write: bool = True) -> tuple[dict[str, Path], dict[str, int]]:
    """This round's items, pairs and preferences joined with the earlier rounds' in ``previous``
    (rewardkit.data.rounds), written under ``folder`` (``write=False``: only their paths and counts, for
    the ranks of a DDP run that read what rank 0 wrote)."""
    from rewardkit.data.rounds import with_previous_rounds
    from rewardkit.data.tables import TableError, read_items, read_pairs, read_preferences, write_table

    try:
        items, pairs, prefs, stats = with_previous_rounds(read_items(ITEMS), read_pairs(PAIRS),
                                                          read_preferences(PREFERENCES), previous)
    except TableError as exc:
        raise SystemExit(f"train: the earlier rounds in {previous}: {exc}") from None
    out = {"items": folder / "items.parquet", "pairs": folder / "pairs.parquet",
           "preferences": folder / "preferences.parquet"}
    if not write:
        return out, stats
    folder.mkdir(parents=True, exist_ok=True)
    write_table(items, out["items"], "items")
    write_table(pairs, out["pairs"], "pairs")
    write_table(prefs, out["preferences"], "preferences")
    print(f"  with the earlier rounds in {previous}: +{stats['previous_pairs']} pairs, "
          f"+{stats['previous_preferences']} answers")
    return out, stats


def main() -> None:
    chdir_root()
    if len(sys.argv) != 2 or sys.argv[1] not in ("global", "local"):
        raise SystemExit("usage: python -m pipelines.train global|local")
    stage = sys.argv[1]
    p = params("train")
    from rewardkit.train import TrainConfig, train
    from rewardkit.train.distributed import launched_as_rank_zero

    d = deep_merge(p.get("common") or {}, p.get(stage) or {})
    out_dir = MODELS_DIR / stage
    rank_zero = launched_as_rank_zero()  # False in the processes Lightning starts for the other devices
    if out_dir.exists() and rank_zero:
        shutil.rmtree(out_dir)  # a DVC out is rebuilt from scratch (resume is for interactive runs)
    tables = {"items": ITEMS, "pairs": PAIRS, "preferences": PREFERENCES}
    include = p.get("include_previous", True)
    if not isinstance(include, bool):
        raise SystemExit(f"params.yaml: train.include_previous must be true or false, not {include!r}")
    previous = Path(params("pairs").get("active", {}).get("previous") or "data/previous_round")
    prev_stats = {"previous_pairs": 0, "previous_preferences": 0}
    if include and (previous / "pairs.parquet").is_file() and (previous / "items.parquet").is_file():
        tables, prev_stats = _with_previous_rounds(previous, out_dir / "training_data", write=rank_zero)
    d.update(stage=stage, items=str(tables["items"]), pairs=str(tables["pairs"]),
             preferences=str(tables["preferences"]), probes=str(PROBES), out_dir=str(out_dir), resume=None, export=True)
    cfg = TrainConfig.from_dict(d)
    with step(f"train_{stage}"):
        result = train(cfg)
    if not result.is_global_zero:
        return  # rank 0 writes the reports
    m = result.metrics
    val = m.get("val") or {}
    dis = m.get("disentanglement") or {}
    report = {
        "stage": stage,
        "val_pairwise_accuracy": val.get("pairwise_accuracy"),
        "val_tie_band_accuracy": val.get("tie_band_accuracy"),
        "val_ece": val.get("ece"),
        "val_ece_calibrated": val.get("ece_calibrated"),
        "val_bt_loss": val.get("bt_loss"),
        "disentanglement_accuracy": dis.get("accuracy"),
        "disentanglement_pairs": dis.get("n_pairs"),
        "epochs": m.get("epochs"),
        "selected_epoch": m.get("selected_epoch"),  # the epoch whose checkpoint was exported (best by monitor)
        "selected_weights": m.get("weights"),
        "fit_seconds": m.get("fit_seconds"),
        **prev_stats,  # pairs and answers of earlier rounds trained on (train.include_previous)
    }
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    (REPORTS_DIR / f"train_{stage}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = learning_curve_rows(out_dir / "logs" / "csv" / "version_0" / "metrics.csv")
    import polars as pl

    curve = pl.DataFrame(rows) if rows else pl.DataFrame(schema={"epoch": pl.Int64, "train_loss": pl.Float64,
                                                                   "val_pairwise_accuracy": pl.Float64})
    sel = pl.lit(report["selected_epoch"], dtype=pl.Int64)
    curve = curve.with_columns((pl.col("epoch") == sel).fill_null(False).alias("selected"))
    curve.write_csv(REPORTS_DIR / f"learning_curve_{stage}.csv")
    print("  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()))


if __name__ == "__main__":
    main()
