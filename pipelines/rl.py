"""Stage ``rl``: Hi-GRPO on a tiny warm-started policy, rewarded by the exported scorer set.

The run's :class:`rewardkit.rl.HiGRPOConfig` is the ``rl`` section of params.yaml; the pipeline fixes
only where it writes (``data/rl/``: warm-started policy, checkpoints, logs, final policy, samples before
and after). A small report for DVC goes to ``reports/``: ``rl.json`` (metrics: R_high and R_low at the
start and end of the run, before/after evaluation), ``rl_rewards.csv`` (the reward curve, one row per
step) and ``rl/`` (``reward_curve.png`` and the before/after renders).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

from pipelines._common import REPORTS_DIR, chdir_root, params, step

RL_DIR = Path("data/rl")  # rl: init_policy/, checkpoints/, policy/, metrics.*, samples_before|after/
RL_REPORT = REPORTS_DIR / "rl.json"
RL_CURVE = REPORTS_DIR / "rl_rewards.csv"
RL_PLOTS = REPORTS_DIR / "rl"

# Columns of the reward curve DVC plots (the full per-term log stays in data/rl/metrics.csv).
CURVE_COLUMNS = ("step", "r_high", "r_low", "r_high_group_std", "r_low_group_std")
# with rl.heldout_prompts + rl.eval_every: the held-out evaluation, empty on steps without one
HELDOUT_COLUMNS = ("heldout/r_high", "heldout/r_low")


def curve_columns(records: list[dict]) -> list[str]:
    return list(CURVE_COLUMNS) + [c for c in HELDOUT_COLUMNS if any(c in r for r in records)]


def curve_rows(records: list[dict]) -> list[dict]:
    """One row per optimizer step that produced rewards (skipped steps have no R_high)."""
    cols = curve_columns(records)
    return [{k: r.get(k) for k in cols} for r in records if r.get("r_high") is not None]


def report(summary: dict) -> dict:
    """The metrics DVC shows: the start/end windows of the training curve and the fixed-seed evaluations."""
    keys = ("steps", "window", "r_high_first", "r_high_last", "r_low_first", "r_low_last", "r_high_rose", "r_low_rose")
    out = {k: summary.get(k) for k in keys}
    for when in ("eval_before", "eval_after"):
        ev = summary.get(when) or {}
        out[when] = {k: ev[k] for k in ("r_high", "r_low") if k in ev}
    return out


def reward_line(rep: dict) -> str | None:
    """'R_high a -> b, R_low c -> d over N Hi-GRPO steps (...)' from :func:`report`; None if no step scored."""
    if rep.get("r_high_first") is None:
        return None
    return (f"R_high {rep['r_high_first']:.3f} -> {rep['r_high_last']:.3f}, R_low {rep['r_low_first']:.3f} -> "
            f"{rep['r_low_last']:.3f} over {rep['steps']} Hi-GRPO steps (first vs last {rep['window']}-step means)")


def progress_to_stdout() -> None:
    """The trainer's one line per step, on stdout (next to the stage's own lines), printed once."""
    from rewardkit.progress import log_progress

    log_progress(sys.stdout, "  %(message)s")


def main() -> None:
    chdir_root()
    p = dict(params("rl"))
    if "output_dir" in p:
        raise SystemExit("params.yaml rl.output_dir: the pipeline writes the run to data/rl; remove the key")
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    progress_to_stdout()
    p["output_dir"] = str(RL_DIR)
    cfg = HiGRPOConfig.from_dict(p)
    if RL_DIR.exists():
        shutil.rmtree(RL_DIR)  # a DVC out is rebuilt from scratch (resume is for interactive `rewardkit rl`)
    with step("rl"):
        trainer = HiGRPOTrainer(cfg)
        summary = trainer.train(resume=False)
        records = list(trainer.records)
    rep = report(summary)
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    RL_REPORT.write_text(json.dumps(rep, indent=2) + "\n")
    with open(RL_CURVE, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=curve_columns(records))
        w.writeheader()
        w.writerows(curve_rows(records))
    if RL_PLOTS.exists():
        shutil.rmtree(RL_PLOTS)
    RL_PLOTS.mkdir(parents=True)
    for src, dst in ((RL_DIR / "reward_curve.png", "reward_curve.png"),
                     (RL_DIR / "samples_before" / "renders.png", "samples_before.png"),
                     (RL_DIR / "samples_after" / "renders.png", "samples_after.png")):
        if src.exists():
            shutil.copy2(src, RL_PLOTS / dst)
    line = reward_line(rep)
    if line:
        print(f"  {line}")
    print(f"  policy in {RL_DIR / 'policy'}/, reward curve and before/after renders in {RL_PLOTS}/")


if __name__ == "__main__":
    main()
