"""The held-out report of exported scorers, as the pipeline's ``evaluate`` stage writes it: ``metrics.json``,
``holdout_scores.csv``, ``accuracy_by_degradation.csv`` and ``plots/`` (accuracy per degradation, learning
curves, candidate grids with their scores); and the summary lines ``scripts/demo.sh`` ends with."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from rewardkit.eval.heldout import STAGES, accuracy_table, evaluate_heldout
from rewardkit.eval.plots import plot_accuracy, plot_grid, plot_learning_curves, plot_transfer


def real_mesh_transfer(scorers: Any, meshes: str | Path | None, noise: Sequence[float] = (0.01, 0.03),
                       hue: float = 120.0) -> dict[str, Any]:
    """:func:`rewardkit.eval.transfer.transfer_report` on the real-mesh validation set ``meshes`` (a folder
    with ``manifest.json``), its variants in a temporary folder; ``{"skipped": why}`` without the meshes."""
    from rewardkit.eval.transfer import transfer_report

    if not meshes or not (Path(meshes) / "manifest.json").is_file():
        print(f"  transfer: no real meshes at {meshes}/manifest.json: skipped", flush=True)
        return {"skipped": f"no {meshes}/manifest.json"}
    with tempfile.TemporaryDirectory(prefix="rewardkit-transfer-") as tmp:
        return transfer_report(scorers, meshes, tmp, noise=[float(x) for x in noise], hue=float(hue))


def write_heldout_report(scorers: Any, holdout: pl.DataFrame, degradations: list[str], reports_dir: str | Path,
                         grids: int, transfer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the held-out candidates ``holdout`` (items joined with their candidates rows) with ``scorers``
    and write the report into ``reports_dir`` (next to the ``train_<stage>.json`` it reads); ``degradations``:
    the order of the accuracy table's rows; ``grids``: how many prompts get a candidate grid; ``transfer``:
    the keyword arguments of :func:`real_mesh_transfer` (``meshes``, ``noise``, ``hue``), whose report goes
    into ``metrics.json``'s ``transfer`` and ``plots/transfer.png``. Returns the metrics."""
    reports_dir = Path(reports_dir)
    train_reports = {s: json.loads((reports_dir / f"train_{s}.json").read_text()) for s in STAGES}
    report, scored, per_stage_rows = evaluate_heldout(scorers, holdout, train_reports)
    if transfer is not None:
        report["transfer"] = real_mesh_transfer(scorers, **transfer)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    scored.select("item_id", "prompt_id", "prompt", "degradation", "kind", "global", "local").write_csv(
        reports_dir / "holdout_scores.csv")
    acc_table = accuracy_table(per_stage_rows, degradations)
    acc_table.write_csv(reports_dir / "accuracy_by_degradation.csv")
    plots = reports_dir / "plots"
    if plots.exists():
        shutil.rmtree(plots)
    plots.mkdir(parents=True)
    plot_accuracy(acc_table, plots / "accuracy_by_degradation.png")
    plot_learning_curves(plots / "learning_curves.png", reports_dir)
    if (report.get("transfer") or {}).get("meshes"):
        plot_transfer(report["transfer"], plots / "transfer.png")
    for k, (pid,) in enumerate(holdout.select("prompt_id").unique(maintain_order=True).head(grids).rows()):
        sub = scored.filter(pl.col("prompt_id") == pid)
        plot_grid(sub["prompt"][0], sub, plots / f"grid_{k:02d}_{pid}.png")
    return report


def summary_text(report: dict[str, Any], scorers_dir: str | Path, reports_dir: str | Path,
                 title: str = "evaluate: the exported scorers") -> str:
    """Where the scorers are, how good they are, how to use them."""
    lines = ["", title, f"  scorers:  {scorers_dir}/ (global/ and local/, a ScorerSet)"]
    for stage in STAGES:
        r = report[stage]
        if r["holdout_pairs"]:
            held = (f"held-out clean-vs-degraded accuracy {_pct(r['holdout_owned_accuracy'])} on its own "
                    f"degradations, {_pct(r['holdout_other_accuracy'])} on the other stage's (chance 50%)")
        else:
            held = f"held-out candidates scored in {reports_dir}/holdout_scores.csv (no recorded degradations)"
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
        f"  report:   {reports_dir}/metrics.json, {reports_dir}/plots/ (dvc metrics show; dvc plots show)",
        f"  score a mesh:  rewardkit score MESH.glb --prompt \"a red wooden chair with four legs\" --scorer {scorers_dir}",
        "",
    ]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


__all__ = ["real_mesh_transfer", "summary_text", "write_heldout_report"]
