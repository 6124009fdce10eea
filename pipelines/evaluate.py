"""Stage ``evaluate``: the report of a pipeline run (``reports/``), a thin caller of :mod:`rewardkit.eval.report`
(:func:`~rewardkit.eval.report.write_heldout_report`, usable from Python without DVC).

- ``reports/metrics.json`` (``dvc metrics show``): per stage, the validation figures of training
  (pairwise accuracy, tie-band accuracy, ECE, disentanglement) and, on the *held-out* demo prompts, how
  often the exported scorer ranks the clean candidate above each degraded one: over the degradations the
  stage owns (global: geometry, local: texture; should be high), over those of the other stage (should
  sit near chance: 0.5, equal scores counting half) and per degradation type.
- ``reports/accuracy_by_degradation.csv`` (``dvc plots show``) and ``reports/plots/``: accuracy per
  degradation type with the number of held-out pairs behind each figure (types without pairs marked),
  both learning curves with the exported checkpoint's epoch marked (PNG), and grids of held-out
  candidates with their scores.
- ``reports/holdout_scores.csv``: every held-out candidate's score per stage.
- ``metrics.json``'s ``transfer`` and ``reports/plots/transfer.png``: the real-mesh transfer report
  (:func:`rewardkit.eval.transfer.transfer_report`, the same implementation as benchmarks/bench_transfer.py)
  on ``evaluate.transfer.meshes`` (the real-mesh validation set, never trained on): per stage, the fraction of
  real meshes where the original beats each degradation (vertex noise at each strength, texture grey, hue
  rotated) and the global score's largest change under texture-only changes.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from pipelines._common import CANDIDATES, ITEMS, REPORTS_DIR, SCORERS_DIR, chdir_root, params, step
from rewardkit.data import read_candidates, read_items
from rewardkit.eval.report import summary_text, write_heldout_report
from rewardkit.scoring import ScorerSet


def main() -> None:
    chdir_root()
    p = params("evaluate")
    cands = read_candidates(CANDIDATES)
    hold = read_items(ITEMS).join(cands.drop("prompt_id"), on="item_id").filter(pl.col("split") == "holdout")
    if hold.height == 0:
        raise SystemExit("evaluate: no held-out prompts (generate.holdout_per_category is 0, or generate.own "
                         "has holdout_fraction 0 and no split column)")
    scorers = ScorerSet.from_pretrained(SCORERS_DIR)
    order = [d for d in cands["degradation"].unique(maintain_order=True).to_list() if d not in ("clean", "unknown")]
    with step("evaluate"):
        report = write_heldout_report(scorers, hold, order, REPORTS_DIR, int(p["grids"]), transfer=p.get("transfer"))
    print_summary(report)


def print_summary(report: dict[str, Any], title: str = "evaluate: the exported scorers") -> None:
    """Where the scorers are, how good they are, how to use them (also the end of scripts/demo.sh)."""
    print(summary_text(report, SCORERS_DIR, REPORTS_DIR, title), flush=True)


if __name__ == "__main__":
    main()
