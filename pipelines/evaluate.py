"""Stage ``evaluate``: the report of a pipeline run (``reports/``), a thin caller of :mod:`rewardkit.eval.heldout`
and :mod:`rewardkit.eval.plots` (usable from Python without DVC).

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
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import polars as pl

from pipelines._common import CANDIDATES, ITEMS, REPORTS_DIR, SCORERS_DIR, chdir_root, params, step
from rewardkit.eval.heldout import STAGES, accuracy_table, evaluate_heldout
from rewardkit.eval.plots import plot_accuracy, plot_grid, plot_learning_curves


def main() -> None:
    chdir_root()
    p = params("evaluate")
    from rewardkit.data.candidates import read_candidates
    from rewardkit.data.tables import read_items
    from rewardkit.scoring import ScorerSet

    cands = read_candidates(CANDIDATES)
    items = read_items(ITEMS).join(cands.drop("prompt_id"), on="item_id")
    hold = items.filter(pl.col("split") == "holdout")
    if hold.height == 0:
        raise SystemExit("evaluate: no held-out prompts (generate.holdout_per_category is 0, or generate.own "
                         "has holdout_fraction 0 and no split column)")
    scorers = ScorerSet.from_pretrained(SCORERS_DIR)
    with step("evaluate"):
        train_reports = {s: json.loads((REPORTS_DIR / f"train_{s}.json").read_text()) for s in STAGES}
        report, scored, per_stage_rows = evaluate_heldout(scorers, hold, train_reports)

        REPORTS_DIR.mkdir(parents=True, exist_ok=True)
        (REPORTS_DIR / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        scored.select("item_id", "prompt_id", "prompt", "degradation", "kind", "global", "local").write_csv(
            REPORTS_DIR / "holdout_scores.csv")
        order = [d for d in cands["degradation"].unique(maintain_order=True).to_list() if d not in ("clean", "unknown")]
        acc_table = accuracy_table(per_stage_rows, order)
        acc_table.write_csv(REPORTS_DIR / "accuracy_by_degradation.csv")

        plots = REPORTS_DIR / "plots"
        if plots.exists():
            shutil.rmtree(plots)
        plots.mkdir(parents=True)
        plot_accuracy(acc_table, plots / "accuracy_by_degradation.png")
        plot_learning_curves(plots / "learning_curves.png", REPORTS_DIR)
        for k, (pid,) in enumerate(hold.select("prompt_id").unique(maintain_order=True).head(int(p["grids"])).rows()):
            sub = scored.filter(pl.col("prompt_id") == pid)
            plot_grid(sub["prompt"][0], sub, plots / f"grid_{k:02d}_{pid}.png")

    print_summary(report)


def print_summary(report: dict[str, Any], title: str = "evaluate: the exported scorers") -> None:
    """Where the scorers are, how good they are, how to use them (also the end of scripts/demo.sh)."""
    lines = ["", title, f"  scorers:  {SCORERS_DIR}/ (global/ and local/, a ScorerSet)"]
    for stage in STAGES:
        r = report[stage]
        if r["holdout_pairs"]:
            held = (f"held-out clean-vs-degraded accuracy {_pct(r['holdout_owned_accuracy'])} on its own "
                    f"degradations, {_pct(r['holdout_other_accuracy'])} on the other stage's (chance 50%)")
        else:
            held = f"held-out candidates scored in {REPORTS_DIR}/holdout_scores.csv (no recorded degradations)"
        lines.append(f"  {stage:6s}  {held}; validation pairwise accuracy {_pct(r['val_accuracy'])}")
    lines += [
        f"  report:   {REPORTS_DIR}/metrics.json, {REPORTS_DIR}/plots/ (dvc metrics show; dvc plots show)",
        f"  score a mesh:  rewardkit score MESH.glb --prompt \"a red wooden chair with four legs\" --scorer {SCORERS_DIR}",
        "",
    ]
    print("\n".join(lines), flush=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


if __name__ == "__main__":
    main()
