"""The evaluation report's figures: held-out accuracy per degradation type, learning curves, candidate grids.

Each takes tables or a reports folder and writes one PNG (matplotlib, Agg backend); the pipeline's
``evaluate`` stage writes them under ``reports/plots/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl


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


def selected_epochs(reports_dir: str | Path) -> dict[str, int]:
    """The epoch whose checkpoint each stage exported (``selected_epoch`` of ``train_<stage>.json``)."""
    reports_dir = Path(reports_dir)
    out = {}
    for stage in ("global", "local"):
        f = reports_dir / f"train_{stage}.json"
        if f.exists():
            e = json.loads(f.read_text()).get("selected_epoch")
            if isinstance(e, int):
                out[stage] = e
    return out


def plot_learning_curves(path: Path, reports_dir: str | Path) -> dict[str, int]:
    """Train loss and validation accuracy per epoch of both stages, with the exported checkpoint's epoch
    marked (a ring and a label). Returns the marked epoch per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports_dir = Path(reports_dir)
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



__all__ = ["plot_accuracy", "plot_grid", "plot_learning_curves", "selected_epochs"]


def plot_transfer(report: dict, path: Path) -> None:
    """Bars of the real-mesh transfer report (:func:`rewardkit.eval.transfer.transfer_report`): per stage and
    degradation, the fraction of real meshes where the original scores above the degraded one (n per bar),
    the 0.5 chance line, and global's largest score change under texture-only changes in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in ("global", "local") if s in report]
    types = list(dict.fromkeys(d for s in stages for d in report[s]["per_degradation"]))
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(types) + 2.0))
    y = np.arange(len(types))
    colours = {"global": "tab:blue", "local": "tab:orange"}
    for j, stage in enumerate(stages):
        per = report[stage]["per_degradation"]
        acc = [per[t]["original_wins"] if t in per and per[t]["n"] else np.nan for t in types]
        yy = y + (j - 0.5) * 0.4
        ax.barh(yy, acc, height=0.4, color=colours[stage], label=f"{stage} scorer")
        for t, v, yv in zip(types, acc, yy):
            if not np.isnan(v):
                ax.text(min(v, 1.0) + 0.01, yv, f"{v:.2f} (n={per[t]['n']})", va="center", fontsize=8)
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(y, types)
    ax.set_xlim(0, 1.25)
    ax.set_xlabel("fraction of real meshes where the original scores above the degraded mesh (ties half)")
    shift = report.get("global", {}).get("max_abs_shift_under_texture_changes")
    ax.set_title(f"real-mesh transfer ({report.get('meshes')} meshes); global's max |change| under texture-only "
                 f"changes: {shift}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
