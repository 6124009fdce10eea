"""The report of a finished Hi-GRPO run, as the pipeline's ``rl`` and ``rl_penalised`` stages write it.

:func:`write_run_report`: ``<report>.json`` (the global and local rewards at the start and end of the run, the
before/after evaluation, the reward-hacking guard's flags), the reward curve CSV (one row per step: the global
and local rewards and every term's mean and within-group std, the guard's agreement and flag per learned term)
and a plots folder (``reward_curve.png``, the before/after renders, ``prompts.csv`` + ``prompts.png``: per prompt
the global reward and every global term before and after, flagged prompts marked, and ``audit/step-N.png``).
:func:`penalised_params` and :func:`write_comparison`: the same run with every learned (scorer) term rewarded as
``mean - k * std``, compared per prompt with the plain run (``compare.csv`` + ``compare.png``).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewardkit.config import ConfigError

# Columns of the reward curve DVC plots (the full per-term log stays in data/rl/metrics.csv).
# the trainer's own per-step metric names (``global/loss``, ``local/reward`` ...): no reward term may take one
RESERVED_TERM_NAMES = ("reward", "reward_combined", "reasoning_tokens", "tokens", "entropy", "kl", "clip_low_frac",
                       "clip_high_frac", "clip_frac", "ratio_mean", "loss")

CURVE_COLUMNS = ("step", "global/reward", "local/reward", "global/reward_group_std", "local/reward_group_std")
# with rl.heldout_prompts + rl.eval_every: the held-out evaluation, empty on steps without one
HELDOUT_COLUMNS = ("heldout/global/reward", "heldout/local/reward")


def _is_term_column(k: str) -> bool:
    """Per-term means / within-group stds / uncertainties (``global/<term>...``) and the guard's agreement
    and flag (``guard/<step>/<term>/agreement|flag``)."""
    if k.startswith(("global/", "local/")):
        base = k.partition("/")[2].removesuffix("_group_std").removesuffix("_uncertainty")
        return base not in RESERVED_TERM_NAMES  # not the trainer's own global/loss, global/reward, ...
    return k.startswith("guard/") and k.endswith(("/agreement", "/flag"))


def curve_columns(records: list[dict]) -> list[str]:
    terms: list[str] = []
    for r in records:
        terms += [k for k in r if _is_term_column(k) and k not in terms]
    return list(CURVE_COLUMNS) + terms + [c for c in HELDOUT_COLUMNS if any(c in r for r in records)]


def curve_rows(records: list[dict]) -> list[dict]:
    """One row per optimizer step that produced rewards (skipped steps have no global reward)."""
    cols = curve_columns(records)
    return [{k: r.get(k) for k in cols} for r in records if r.get("global/reward") is not None]


def report_metrics(summary: dict) -> dict:
    """The metrics DVC shows: the start/end windows of the training curve and the fixed-seed evaluations."""
    keys = ("steps", "window", "global/reward_first", "global/reward_last", "local/reward_first", "local/reward_last",
            "global/reward_rose", "local/reward_rose")
    out = {k: summary.get(k) for k in keys}
    for when in ("eval_before", "eval_after"):
        ev = summary.get(when) or {}
        out[when] = {k: ev[k] for k in ("global/reward", "local/reward") if k in ev}
    out["guard"] = {term: {"flagged_steps": len(g["flagged_steps"]), "flagged_prompts": g["flagged_prompts"]}
                    for term, g in (summary.get("guard") or {}).items()}
    return out


def prompt_rows(before: dict, after: dict, guard: dict | None = None) -> list[dict]:
    """Per evaluation prompt: the global reward and every global term (``global/<term>``) before and after training
    (the fixed-seed evaluations' ``per_prompt`` means) and the learned terms the guard flagged on it."""
    b = {r["prompt"]: r for r in before.get("per_prompt", [])}
    a = {r["prompt"]: r for r in after.get("per_prompt", [])}
    flagged: dict[str, list[str]] = {}
    for term, g in (guard or {}).items():
        for p in g.get("flagged_prompts", []):
            flagged.setdefault(p, []).append(term)
    rows = []
    for prompt in [p for p in b if p in a]:
        keys = ["global/reward"] + [k for k in b[prompt] if k.startswith("global/") and _is_term_column(k)
                                    and not k.endswith(("_group_std", "_uncertainty"))]
        row: dict = {"prompt": prompt}
        for k in keys:
            row[f"{k}_before"], row[f"{k}_after"] = b[prompt].get(k), a[prompt].get(k)
            if row[f"{k}_before"] is not None and row[f"{k}_after"] is not None:
                row[f"{k}_change"] = row[f"{k}_after"] - row[f"{k}_before"]
        row["guard_flagged"] = " ".join(sorted(flagged.get(prompt, [])))
        rows.append(row)
    return rows


def plot_bars(rows: list[dict], path: str | Path, arms: tuple[tuple[str, str, str], ...], title: str, reward_title: str,
              ) -> None:
    """One panel per quantity (the global reward, each global term), per prompt one bar per arm (``(suffix, label,
    colour)``: the row's ``<key>_<suffix>``); a prompt the guard flagged is labelled so, in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not rows:
        return
    keys = [c[: -len("_before")] for c in rows[0] if c.endswith("_before")]
    height = 0.8 / len(arms)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.8 * len(keys) + 1.2, (height + 0.25) * len(rows) + 1.6),
                             squeeze=False)
    y = np.arange(len(rows))
    labels = [r["prompt"] + (f"\n(flagged: {r['guard_flagged']})" if r.get("guard_flagged") else "") for r in rows]
    for ax, key in zip(axes[0], keys):
        for j, (arm, label, colour) in enumerate(arms):
            ax.barh(y + (j - (len(arms) - 1) / 2) * height, [r.get(f"{key}_{arm}") or 0.0 for r in rows],
                    height=height, label=label, color=colour)
        ax.set_title(key.replace("global/", "global term: ") if key != "global/reward" else reward_title, fontsize=9)
        ax.set_yticks(y)
        ax.set_yticklabels(labels if ax is axes[0][0] else [], fontsize=8)
        for t, r in zip(ax.get_yticklabels(), rows):
            if r.get("guard_flagged"):
                t.set_color("#c92a2a")
        ax.axvline(0, color="0.5", lw=0.6)
        ax.invert_yaxis()
    handles, legend_labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="lower center", ncol=len(arms), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_prompts(rows: list[dict], path: Path) -> None:
    """Before/after bars per prompt for the global reward and each global term (:func:`prompt_rows`)."""
    plot_bars(rows, path, (("before", "before", "#9aa5b1"), ("after", "after", "#1f77b4")),
              "Per prompt, fixed-seed evaluation before vs after Hi-GRPO (red: the guard flagged a learned term)",
              "global reward")


def reward_line(rep: dict) -> str | None:
    """'global reward a -> b, local reward c -> d over N Hi-GRPO steps (...)' from :func:`report_metrics`; None
    if no step scored."""
    if rep.get("global/reward_first") is None:
        return None
    return (f"global reward {rep['global/reward_first']:.3f} -> {rep['global/reward_last']:.3f}, local reward "
            f"{rep['local/reward_first']:.3f} -> {rep['local/reward_last']:.3f} over {rep['steps']} Hi-GRPO steps (first vs last {rep['window']}-step means)")


def penalised_params(p: dict, k: float) -> dict:
    """``p`` (a :class:`~rewardkit.rl.HiGRPOConfig` dict) with ``uncertainty_penalty: k`` on every learned (scorer) reward term."""
    if k < 0:
        raise ConfigError(f"rl_penalised.uncertainty_penalty must be >= 0, got {k}")
    out = dict(p)
    learned = 0
    for key in ("rewards_global", "rewards_local"):
        terms = []
        for t in p.get(key) or []:
            t = dict(t)
            if t.get("scorer"):
                t["uncertainty_penalty"] = k
                learned += 1
            terms.append(t)
        out[key] = terms
    if not learned:
        raise ConfigError("rl: no reward term has a scorer, so the penalised run has nothing to penalise")
    return out


def compare_rows(before: dict, plain: dict, penalised: dict, guard_plain: dict | None, guard_pen: dict | None,
                 ) -> list[dict]:
    """Per evaluation prompt: the global reward and every global term before RL, after the plain arm and after the
    penalised arm (fixed-seed evaluations), and the learned terms the guard flagged in each arm."""
    plain_rows = {r["prompt"]: r for r in prompt_rows(before, plain, guard_plain)}
    pen_rows = {r["prompt"]: r for r in prompt_rows(before, penalised, guard_pen)}
    rows = []
    for prompt, a in plain_rows.items():
        b = pen_rows.get(prompt)
        if b is None:
            continue
        row: dict = {"prompt": prompt}
        for k in [c[: -len("_before")] for c in a if c.endswith("_before")]:
            row[f"{k}_before"] = a[f"{k}_before"]
            row[f"{k}_plain"] = a.get(f"{k}_after")
            row[f"{k}_penalised"] = b.get(f"{k}_after")
        row["guard_flagged_plain"] = a["guard_flagged"]
        row["guard_flagged_penalised"] = b["guard_flagged"]
        rows.append(row)
    return rows


def plot_compare(rows: list[dict], path: Path, k: float) -> None:
    """Before / after plain RL / after penalised RL per prompt (:func:`compare_rows`)."""
    plot_bars(rows, path, (("before", "before RL", "#9aa5b1"), ("plain", "after RL", "#1f77b4"),
                           ("penalised", f"after RL, penalised (k={k:g})", "#e8590c")),
              "Per prompt, fixed-seed evaluation: Hi-GRPO with the plain vs the uncertainty-penalised scorer terms",
              "global reward (each arm's own objective)")


def write_csv(rows: list[dict], path: Path) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def write_run_report(summary: dict, records: Sequence[dict], run_dir: str | Path, report_path: str | Path,
                     curve_path: str | Path, plots_dir: str | Path) -> dict:
    """Write the report of the run in ``run_dir`` (the trainer's ``summary`` and per-step ``records``):
    the metrics JSON, the reward curve CSV and the plots folder (replaced). Returns the metrics and prints
    the guard's flags and the reward line."""
    run_dir, plots_dir = Path(run_dir), Path(plots_dir)
    rep = report_metrics(summary)
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(json.dumps(rep, indent=2) + "\n")
    with open(curve_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=curve_columns(list(records)))
        w.writeheader()
        w.writerows(curve_rows(list(records)))
    if plots_dir.exists():
        shutil.rmtree(plots_dir)
    plots_dir.mkdir(parents=True)
    for src, dst in ((run_dir / "reward_curve.png", "reward_curve.png"),
                     (run_dir / "samples_before" / "renders.png", "samples_before.png"),
                     (run_dir / "samples_after" / "renders.png", "samples_after.png")):
        if src.exists():
            shutil.copy2(src, plots_dir / dst)
    for grid in sorted((run_dir / "audit").glob("step-*/grid.png")):
        (plots_dir / "audit").mkdir(exist_ok=True)
        shutil.copy2(grid, plots_dir / "audit" / f"{grid.parent.name}.png")
    samples = [run_dir / w / "samples.json" for w in ("samples_before", "samples_after")]
    if all(f.exists() for f in samples):
        rows = prompt_rows(*(json.loads(f.read_text()) for f in samples), summary.get("guard"))
        if rows:
            write_csv(rows, plots_dir / "prompts.csv")
            plot_prompts(rows, plots_dir / "prompts.png")
    for term, g in rep["guard"].items():
        if g["flagged_steps"]:
            print(f"  guard: {term} rose while its anchors fell on {g['flagged_steps']} step(s), prompts {g['flagged_prompts']}")
    line = reward_line(rep)
    if line:
        print(f"  {line}")
    print(f"  policy in {run_dir / 'policy'}/, reward curve and before/after renders in {plots_dir}/")
    return rep


def write_comparison(plain_dir: str | Path, plain_report: str | Path, penalised_dir: str | Path,
                     penalised_guard: dict | None, plots_dir: str | Path, k: float) -> Path | None:
    """``compare.csv`` + ``compare.png`` in ``plots_dir``: per prompt, before RL, after the plain run (in
    ``plain_dir``, its metrics at ``plain_report``) and after the penalised one. None when a run lacks its
    fixed-seed evaluations."""
    plain_dir, penalised_dir, plots_dir = Path(plain_dir), Path(penalised_dir), Path(plots_dir)
    samples = [plain_dir / "samples_before/samples.json", plain_dir / "samples_after/samples.json",
               penalised_dir / "samples_after/samples.json"]
    if not all(f.exists() for f in samples):
        return None
    plain_guard: dict[str, Any] = (json.loads(Path(plain_report).read_text()).get("guard")
                                   if Path(plain_report).exists() else None) or {}
    rows = compare_rows(*(json.loads(f.read_text()) for f in samples),
                        {t: {"flagged_prompts": g["flagged_prompts"]} for t, g in plain_guard.items()}, penalised_guard)
    write_csv(rows, plots_dir / "compare.csv")
    plot_compare(rows, plots_dir / "compare.png", k)
    print(f"  per prompt, before / after plain / after penalised: {plots_dir / 'compare.csv'} (+ .png)")
    return plots_dir / "compare.csv"


__all__ = ["CURVE_COLUMNS", "HELDOUT_COLUMNS", "compare_rows", "curve_columns", "curve_rows", "penalised_params",
           "plot_bars", "plot_compare", "plot_prompts", "prompt_rows", "report_metrics", "reward_line", "write_comparison",
           "write_csv", "write_run_report"]
