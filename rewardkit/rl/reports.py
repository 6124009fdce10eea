"""What a Hi-GRPO run reports: per-step reward metrics (every term's mean and within-group std,
:func:`reward_metrics`), the metrics log (jsonl + csv), the summary and the reward plot (:class:`MetricsLog`),
and the files of a fixed-seed evaluation (:func:`write_evaluation`).

Metric keys name the step they belong to: ``global/...`` for step 1 (coarse shape), ``local/...`` for step 2
(refinement); see docs/hi-grpo.md ("Metrics")."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rewardkit.reporting.sample_grid import plot_sample_grid, sample_cells
from rewardkit.rl.records import STEPS, GroupRollout
from rewardkit.rl.rewards import group_stats
from rewardkit.rl.sequences import PHASE_TEXT

__all__ = ["reward_metrics", "gather_mean", "write_evaluation", "MetricsLog"]

def reward_metrics(groups: Sequence[GroupRollout], lam: float) -> dict[str, float]:
    """The reward metrics of ``groups``: per step ``<step>/reward`` (batch mean) and ``<step>/reward_group_std``
    (mean within-group std), ``global/reward_combined`` (R~ = global + ``lam`` local, the global step's
    advantage target), per term ``<step>/<term>``, ``<step>/<term>_group_std``, ``<step>/<term>_uncertainty``
    (terms that report a std) and ``failed/<step>/<term>`` (failed samples), ``<step>/reasoning_tokens`` and
    ``empty_meshes``."""
    out: dict[str, float] = {}
    if not groups:
        return out
    G = groups[0].group_size
    rg = np.concatenate([g.steps["global"].reward for g in groups])
    rl = np.concatenate([g.steps["local"].reward for g in groups])
    for name, v in (("global/reward", rg), ("local/reward", rl), ("global/reward_combined", rg + lam * rl)):
        out[name], out[f"{name}_group_std"] = group_stats(v, G)
    for step in STEPS:
        for term in groups[0].steps[step].terms:
            v = np.concatenate([g.steps[step].terms[term] for g in groups])
            out[f"{step}/{term}"], out[f"{step}/{term}_group_std"] = group_stats(v, G)
            if np.isnan(v).any():
                out[f"failed/{step}/{term}"] = float(np.isnan(v).sum())
        for term in groups[0].steps[step].term_stds:  # a term that reports a std (an ensemble's spread): its batch mean
            v = np.concatenate([g.steps[step].term_stds[term] for g in groups])
            out[f"{step}/{term}_uncertainty"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    for step in STEPS:
        out[f"{step}/reasoning_tokens"] = float(np.mean([sum(1 for p in s.phases if p == PHASE_TEXT)
                                                         for g in groups for s in g.steps[step].sequences]))
    out["empty_meshes"] = float(sum(m is None for g in groups for step in STEPS for m in g.steps[step].meshes))
    return out


def gather_mean(fabric: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Average each metric over the devices that have it (key sets can differ, e.g. failures)."""
    if fabric.world_size == 1:
        return metrics
    import torch.distributed as dist

    gathered: list[dict[str, float] | None] = [None] * fabric.world_size
    dist.all_gather_object(gathered, metrics)
    keys = sorted({k for g in gathered for k in g})
    return {k: float(np.mean([g[k] for g in gathered if k in g])) for k in keys}


def write_evaluation(folder: Path, groups: Sequence[GroupRollout], metrics: dict[str, float], *, lam: float,
                     weights: dict[str, dict[str, float]], render: bool, render_size: int, title: str) -> None:
    """A fixed-seed evaluation's files: each group's first sample as ``<g>_global.ply``/``<g>_local.ply``,
    ``samples.json`` (metrics, samples, the grid's data, per-prompt metrics) and with ``render``
    ``renders.png`` (:mod:`rewardkit.reporting.sample_grid`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for gi, g in enumerate(groups):
        for step in STEPS:
            m = g.steps[step].meshes[0]
            if m is not None:
                m.export(folder / f"{gi:02d}_{step}.ply")
        rows.append({"prompt": g.prompt, "plan": g.steps["global"].sequences[0].reasoning_text,
                     "detail": g.steps["local"].sequences[0].reasoning_text,
                     **{f"{step}/reward": float(g.steps[step].reward[0]) for step in STEPS}})
    grid = sample_cells(groups, 4, weights)
    per_prompt = [{"prompt": g.prompt, **reward_metrics([g], lam)} for g in groups]
    (folder / "samples.json").write_text(json.dumps({"metrics": metrics, "samples": rows, "grid": grid,
                                                     "per_prompt": per_prompt}, indent=2))
    if render:
        plot_sample_grid(groups, folder / "renders.png", max_samples=4, render_size=render_size, weights=weights,
                         title=title, render=True)


class MetricsLog:
    """The run's per-step rows under ``out``: ``metrics.jsonl`` (appended), ``metrics.csv`` (rewritten, one
    column per key ever logged), the summary of the first and last steps and ``reward_curve.png``."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.records: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any], write: bool) -> None:
        """Add one step's row; with ``write`` (rank 0) append it to the files."""
        self.records.append(row)
        if not write:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.records)

    def reload(self, step: int, write: bool) -> None:
        """Keep the logged rows up to ``step`` (a resumed run; a crash after a checkpoint logged more)."""
        jl = self.out / "metrics.jsonl"
        if jl.exists():
            self.records = [r for r in (json.loads(line) for line in jl.read_text().splitlines() if line.strip())
                            if r["step"] <= step]
            if write:
                jl.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def _scored(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "global/reward" in r]

    def summary(self, steps: int) -> dict[str, Any]:
        """Per step reward, the mean over the first and the last ``window`` scored steps and whether it rose."""
        recs = self._scored()
        if not recs:
            return {}
        k = max(1, min(5, len(recs) // 4))
        out: dict[str, Any] = {"steps": steps, "window": k}
        for step in STEPS:
            first = float(np.mean([r[f"{step}/reward"] for r in recs[:k]]))
            last = float(np.mean([r[f"{step}/reward"] for r in recs[-k:]]))
            out |= {f"{step}/reward_first": first, f"{step}/reward_last": last, f"{step}/reward_rose": last > first}
        return out

    def plot(self) -> None:
        """``reward_curve.png``: per step its reward's batch mean, ± the within-group std and a 5-step mean."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recs = self._scored()
        if not recs:
            return
        steps = [r["step"] for r in recs]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        titles = {"global": "global reward (step 1, coarse shape)", "local": "local reward (step 2, refinement)"}
        for ax, step in zip(axes, STEPS):
            y = np.array([r[f"{step}/reward"] for r in recs])
            s = np.array([r.get(f"{step}/reward_group_std", 0.0) for r in recs])
            ax.plot(steps, y, label="batch mean")
            ax.fill_between(steps, y - s, y + s, alpha=0.2, label="± within-group std")
            if len(y) >= 5:
                kern = np.ones(5) / 5
                ax.plot(steps[2:-2], np.convolve(y, kern, mode="valid"), label="5-step mean")
            ax.set_title(titles[step])
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.out / "reward_curve.png", dpi=100)
        plt.close(fig)
