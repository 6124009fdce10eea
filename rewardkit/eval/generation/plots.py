"""The figure of a generator evaluation: :func:`plot_results`, one bar panel per metric, one colour per run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rewardkit.eval.generation.protocol import MME3DR_CATEGORIES

OVERALL = "overall"  # the key of the metrics over every object (next to per_category)


PLOT_METRICS = (("clip_score", "CLIP score ↑"), ("kd_incep_x100", "KD_incep ×100 ↓"),
                ("kd_dinov2_x100", "KD_dinov2 ×100 ↓"), ("fd_incep", "FD_incep ↓"))


def plot_results(results: dict[str, dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """One bar panel per metric (CLIP, KD_incep, KD_dinov2, FD_incep): bars per category and overall, one
    colour per run (``results``: run label -> result data). Random-init extractors are named in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(results)
    first = results[runs[0]]
    groups = list(first["metrics"]["per_category"]) + [OVERALL]
    keys = [(k, t) for k, t in PLOT_METRICS if any(results[r]["metrics"][OVERALL].get(k) is not None for r in runs)]
    if not keys:
        raise ValueError("no metric to plot")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys) + 1, 0.42 * len(groups) * max(1, len(runs)) + 1.8),
                             squeeze=False)
    h = 0.8 / len(runs)
    ypos = np.arange(len(groups))
    names = [MME3DR_CATEGORIES.get(g, g.replace("_", " ")) for g in groups]
    for ax, (k, label) in zip(axes[0], keys):
        for j, run in enumerate(runs):
            m = results[run]["metrics"]
            vals = [(m["per_category"].get(g, {}) if g != OVERALL else m[OVERALL]).get(k) for g in groups]
            v = [np.nan if x is None else x for x in vals]
            ax.barh(ypos + (j - (len(runs) - 1) / 2) * h, v, height=h, label=run)
            for y_, x in zip(ypos + (j - (len(runs) - 1) / 2) * h, v):
                if np.isfinite(x):
                    ax.text(x, y_, f" {x:.3g}", va="center", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_yticks(ypos)
        ax.set_yticklabels(names if ax is axes[0][0] else [], fontsize=8)
        ax.invert_yaxis()
    if len(runs) > 1:
        axes[0][-1].legend(fontsize=7, loc="lower right")
    heading = title or "Generator evaluation (AR3D-R1 Table 4 metrics)"
    if any(results[r].get("random_init_extractors") for r in runs):
        heading += "\nRANDOM-INIT extractors (demo): not comparable with the paper"
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["PLOT_METRICS", "plot_results"]
