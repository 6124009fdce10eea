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

import shutil
import sys
from pathlib import Path

from pipelines._common import ITEMS, MODELS_DIR, PAIRS, PREFERENCES, PROBES, REPORTS_DIR, chdir_root, params, step
from rewardkit.config import deep_merge
from rewardkit.data.rounds import write_with_previous_rounds
from rewardkit.train import TrainConfig, train
from rewardkit.train.distributed import launched_as_rank_zero
from rewardkit.train.run_report import write_train_report


def main() -> None:
    chdir_root()
    if len(sys.argv) != 2 or sys.argv[1] not in ("global", "local"):
        raise SystemExit("usage: python -m pipelines.train global|local")
    stage = sys.argv[1]
    p = params("train")
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
        folder = out_dir / "training_data"
        if rank_zero:  # the other ranks of a DDP run read what rank 0 wrote
            tables, prev_stats = write_with_previous_rounds(ITEMS, PAIRS, PREFERENCES, previous, folder)
            print(f"  with the earlier rounds in {previous}: +{prev_stats['previous_pairs']} pairs, "
                  f"+{prev_stats['previous_preferences']} answers")
        else:
            tables = {name: folder / f"{name}.parquet" for name in ("items", "pairs", "preferences")}
    cfg = TrainConfig.from_dict(deep_merge(deep_merge(p.get("common") or {}, p.get(stage) or {}), {
        "stage": stage, **{k: str(v) for k, v in tables.items()}, "probes": str(PROBES), "out_dir": str(out_dir),
        "resume": None, "export": True}))
    with step(f"train_{stage}"):
        result = train(cfg)
    if not result.is_global_zero:
        return  # rank 0 writes the reports
    report = write_train_report(stage, result.metrics, out_dir, REPORTS_DIR, **prev_stats)
    print("  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()))


if __name__ == "__main__":
    main()
