"""Stage ``evaluate``: the report of a pipeline run (``reports/``).

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
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines._common import CANDIDATES, ITEMS, REPORTS_DIR, SCORERS_DIR, chdir_root, params, step

OWNS = {"global": "geometry", "local": "texture"}
TIE_EPS = 1e-6


def load_view_tensor(render_dir: str, mode: str):
    import torch

    from rewardkit.render import load_views

    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in load_views(render_dir, mode)])  # V,H,W,3
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def score_items(scorers, items: pl.DataFrame, batch: int = 32) -> dict[str, np.ndarray]:
    """Scores per stage of every item, from its render folder (no re-rendering)."""
    import torch

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
    sel = rows.filter(pl.col("kind").is_in(kinds))
    return round(float(sel["credit"].mean()), 4) if sel.height else None


def stage_report(stage: str, rows: pl.DataFrame, train_report: dict[str, Any]) -> dict[str, Any]:
    owned, other = OWNS[stage], OWNS["local" if stage == "global" else "global"]
    per_deg = {d: round(float(g["credit"].mean()), 4)
               for (d,), g in rows.group_by("degradation", maintain_order=True)}
    return {
        "val_accuracy": train_report.get("val_pairwise_accuracy"),
        "val_tie_band_accuracy": train_report.get("val_tie_band_accuracy"),
        "val_ece": train_report.get("val_ece"),
        "disentanglement": train_report.get("disentanglement_accuracy"),
        "holdout_owned_accuracy": kind_accuracy(rows, [owned, "both"]),
        "holdout_other_accuracy": kind_accuracy(rows, [other]),
        "holdout_pairs": rows.height,
        "accuracy_by_degradation": per_deg,
    }


def accuracy_table(per_stage_rows: dict[str, pl.DataFrame], degradations: list[str]) -> pl.DataFrame:
    """One row per stage x degradation type: ``degradation`` (the plot's label: stage, type and the number
    of pairs, or "no pairs"), ``stage``, ``type``, ``accuracy`` (null without pairs) and ``pairs`` (the
    held-out clean-vs-degraded pairs behind it). ``reports/accuracy_by_degradation.csv``."""
    out = []
    for stage in ("global", "local"):
        rows = per_stage_rows[stage]
        for d in degradations:
            g = rows.filter(pl.col("degradation") == d) if rows.height else rows
            n = int(g.height)
            acc = round(float(g["credit"].mean()), 4) if n else None
            label = f"{stage}: {d} (n={n})" if n else f"{stage}: {d} (no pairs)"
            out.append({"degradation": label, "stage": stage, "type": d, "accuracy": acc, "pairs": n})
    return pl.DataFrame(out, schema={"degradation": pl.Utf8, "stage": pl.Utf8, "type": pl.Utf8,
                                     "accuracy": pl.Float64, "pairs": pl.Int64})


def plot_accuracy(table: pl.DataFrame, path: Path) -> list[str]:
    """Horizontal bars of held-out accuracy per degradation type and stage, each with its number of pairs;
    types without pairs are marked "no pairs" (not drawn as an empty bar). Returns the bar annotations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = table["type"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(types) + 1.8))
    notes: list[str] = []
    if not types:
        ax.text(0.5, 0.5, "no recorded degradations among the held-out candidates", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return notes
    y = np.arange(len(types))
    colours = {"global": "tab:blue", "local": "tab:orange"}
    empty_rows = []
    for j, stage in enumerate(("global", "local")):
        sub = {r["type"]: r for r in table.filter(pl.col("stage") == stage).iter_rows(named=True)}
        acc = [sub[t]["accuracy"] if t in sub and sub[t]["pairs"] else np.nan for t in types]
        yy = y + (j - 0.5) * 0.4
        ax.barh(yy, acc, height=0.4, color=colours[stage], label=f"{stage} scorer")
        for k, t in enumerate(types):
            r = sub.get(t)
            if r is None or not r["pairs"]:
                continue
            note = f"{r['accuracy']:.2f}  n={r['pairs']}"
            ax.text(min(r["accuracy"], 1.0) + 0.01, yy[k], note, va="center", fontsize=7.5, color="0.15")
            notes.append(f"{stage}: {t}: {note}")
    for k, t in enumerate(types):
        if all(not r["pairs"] for r in table.filter(pl.col("type") == t).iter_rows(named=True)):
            empty_rows.append(k)
            ax.axhspan(k - 0.45, k + 0.45, color="0.92", zorder=0)
            ax.text(0.02, k, "no pairs among the held-out candidates", va="center", fontsize=7.5, color="0.35",
                    style="italic")
            notes.append(f"{t}: no pairs")
    ax.axvline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set_yticks(y, types)
    for k in empty_rows:
        ax.get_yticklabels()[k].set_color("0.5")
    ax.set_xlim(0, 1.22)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("held-out accuracy: how often the clean candidate is ranked above the degraded one\n"
                  "(next to each bar: accuracy and n, the number of held-out pairs behind it)", fontsize=9)
    ax.set_title("accuracy by degradation type", fontsize=10, pad=24)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return notes


def selected_epochs(reports_dir: Path = REPORTS_DIR) -> dict[str, int]:
    """The epoch whose checkpoint each stage exported (``selected_epoch`` of ``train_<stage>.json``)."""
    out = {}
    for stage in ("global", "local"):
        f = reports_dir / f"train_{stage}.json"
        if f.exists():
            e = json.loads(f.read_text()).get("selected_epoch")
            if isinstance(e, int):
                out[stage] = e
    return out


def plot_learning_curves(path: Path, reports_dir: Path = REPORTS_DIR) -> dict[str, int]:
    """Train loss and validation accuracy per epoch of both stages, with the exported checkpoint's epoch
    marked (a ring and a label). Returns the marked epoch per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = selected_epochs(reports_dir)
    marked: dict[str, int] = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    colours = {"global": "tab:blue", "local": "tab:orange"}
    for stage in ("global", "local"):
        csv = reports_dir / f"learning_curve_{stage}.csv"
        if not csv.exists():
            continue
        df = pl.read_csv(csv)
        if df.height == 0:
            continue
        for ax, col in zip(axes, ("train_loss", "val_pairwise_accuracy")):
            if col not in df.columns:
                continue
            s = df.select("epoch", col).drop_nulls()
            ax.plot(s["epoch"].to_numpy(), s[col].to_numpy(), marker="o", ms=4, color=colours[stage], label=stage)
            e = selected.get(stage)
            hit = s.filter(pl.col("epoch") == e) if e is not None else s.clear()
            if hit.height:
                v = float(hit[col][0])
                ax.plot([e], [v], marker="o", ms=13, mfc="none", mec="crimson", mew=2, ls="none",
                        label="exported checkpoint")
                ax.annotate(f"{stage}: epoch {e}" + (f"\n{v:.2f}" if col.startswith("val") else ""), (e, v),
                            textcoords="offset points", xytext=(8, -16 if stage == "global" else 10), fontsize=8,
                            color="crimson")
                marked[stage] = e
    axes[0].set_title("train loss (Bradley-Terry)"), axes[1].set_title("validation pairwise accuracy")
    axes[1].set_ylim(0, 1.05)
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.set_xlabel("epoch"), ax.grid(alpha=0.3)
        if uniq:
            ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    fig.suptitle("learning curves; ring: the epoch whose checkpoint was exported (best by the monitored metric)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return marked


def plot_grid(prompt: str, rows: pl.DataFrame, path: Path) -> None:
    """Each candidate of one held-out prompt: rgb and geometry view 0, with both scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rewardkit.render import load_views

    n = rows.height
    fig, axes = plt.subplots(2, n, figsize=(1.5 * n, 3.6), squeeze=False)
    for j, r in enumerate(rows.iter_rows(named=True)):
        for i, mode in enumerate(("rgb", "geometry")):
            ax = axes[i][j]
            try:
                ax.imshow(load_views(r["render_dir"], mode)[0])
            except Exception:  # a mode that was not rendered
                pass
            ax.set_xticks([]), ax.set_yticks([])
        name = r["degradation"] if r["degradation"] != "unknown" else r["item_id"]  # own generations: the id
        axes[0][j].set_title(name.replace("+", "+\n").replace("_", " "), fontsize=7)
        axes[1][j].set_xlabel(f"g {r['global']:.2f}\nl {r['local']:.2f}", fontsize=7)
    fig.suptitle(f'"{prompt}"  (g: global score, l: local score)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
        scores = score_items(scorers, hold)
        scored = hold.with_columns([pl.Series(k, v) for k, v in scores.items()])
        train_reports = {s: json.loads((REPORTS_DIR / f"train_{s}.json").read_text()) for s in ("global", "local")}
        report: dict[str, Any] = {}
        per_stage_rows = {}
        for stage in ("global", "local"):
            rows = clean_vs_degraded(scored, stage)
            per_stage_rows[stage] = rows
            report[stage] = stage_report(stage, rows, train_reports[stage])
        report["holdout_prompts"] = int(hold["prompt_id"].n_unique())
        report["holdout_candidates"] = int(hold.height)

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
        plot_learning_curves(plots / "learning_curves.png")
        for k, (pid,) in enumerate(hold.select("prompt_id").unique(maintain_order=True).head(int(p["grids"])).rows()):
            sub = scored.filter(pl.col("prompt_id") == pid)
            plot_grid(sub["prompt"][0], sub, plots / f"grid_{k:02d}_{pid}.png")

    print_summary(report)


def print_summary(report: dict[str, Any], title: str = "evaluate: the exported scorers") -> None:
    """Where the scorers are, how good they are, how to use them (also the end of scripts/demo.sh)."""
    lines = ["", title, f"  scorers:  {SCORERS_DIR}/ (global/ and local/, a ScorerSet)"]
    for stage in ("global", "local"):
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
