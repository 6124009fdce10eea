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
- ``metrics.json``'s ``transfer`` and ``reports/plots/transfer.png``: the real-mesh transfer report
  (:func:`rewardkit.eval.transfer.transfer_report`, the same implementation as benchmarks/bench_transfer.py)
  on ``evaluate.transfer.meshes`` (the real-mesh validation set, never trained on): per stage, the fraction of
  real meshes where the original beats each degradation (vertex noise at each strength, texture grey, hue
  rotated) and the global score's largest change under texture-only changes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from pipelines._common import CANDIDATES, ITEMS, REPORTS_DIR, SCORERS_DIR, chdir_root, params, step
from rewardkit.eval.heldout import STAGES, accuracy_table, evaluate_heldout
from rewardkit.eval.plots import plot_accuracy, plot_grid, plot_learning_curves, plot_transfer


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
        report["transfer"] = transfer(scorers, p.get("transfer") or {})

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
        if report["transfer"].get("meshes"):
            plot_transfer(report["transfer"], plots / "transfer.png")
        for k, (pid,) in enumerate(hold.select("prompt_id").unique(maintain_order=True).head(int(p["grids"])).rows()):
            sub = scored.filter(pl.col("prompt_id") == pid)
            plot_grid(sub["prompt"][0], sub, plots / f"grid_{k:02d}_{pid}.png")

    print_summary(report)


def transfer(scorers, t: dict) -> dict[str, Any]:
    """The real-mesh transfer report of evaluate.transfer (``{"skipped": why}`` without the meshes)."""
    from rewardkit.eval.transfer import transfer_report

    meshes = Path(t.get("meshes") or "")
    if not t.get("meshes") or not (meshes / "manifest.json").is_file():
        print(f"  transfer: no real meshes at {meshes}/manifest.json (evaluate.transfer.meshes): skipped", flush=True)
        return {"skipped": f"no {meshes}/manifest.json"}
    with tempfile.TemporaryDirectory(prefix="rewardkit-transfer-") as tmp:
        return transfer_report(scorers, meshes, tmp, noise=[float(x) for x in t.get("noise", [0.01, 0.03])],
                               hue=float(t.get("hue", 120.0)))


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
    t = report.get("transfer") or {}
    if t.get("meshes"):
        for stage in STAGES:
            per = ", ".join(f"{d} {v['original_wins']:.2f}" for d, v in t[stage]["per_degradation"].items()
                            if v["n"])
            lines.append(f"  {stage:6s}  real meshes ({t['meshes']}): original beats its degradation: {per}")
        lines.append(f"  global  max |score change| under texture-only changes on real meshes: "
                     f"{t['global']['max_abs_shift_under_texture_changes']}")
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
