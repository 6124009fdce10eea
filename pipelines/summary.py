"""``python -m pipelines.summary``: the closing lines of the demo (scripts/demo.sh prints them after
``dvc repro``, so a run that had nothing to do still says where things are). Reads the reports only."""

from __future__ import annotations

import json

from pipelines._common import REPORTS_DIR, chdir_root


def main() -> None:
    chdir_root()
    metrics = REPORTS_DIR / "metrics.json"
    if not metrics.exists():
        raise SystemExit(f"{metrics}: no report yet; run `dvc repro` first")
    from pipelines.evaluate import print_summary
    from pipelines.rl import RL_DIR
    from rewardkit.reporting.rl_run import reward_line

    print_summary(json.loads(metrics.read_text()), title="rewardkit demo pipeline: done")
    rl_report = REPORTS_DIR / "rl.json"
    line = reward_line(json.loads(rl_report.read_text())) if rl_report.exists() else None
    if line:
        print(f"  rl:       {line}; policy in {RL_DIR / 'policy'}/, plots in {REPORTS_DIR / 'rl'}/")
    eval_gen = REPORTS_DIR / "eval_gen.json"
    if eval_gen.exists():
        eg = json.loads(eval_gen.read_text())
        a, b = eg["init"]["overall"], eg["final"]["overall"]
        parts = [f"{k} {a[k]:.3g} -> {b[k]:.3g}" for k in ("kd_incep_x100", "fd_incep", "kd_dinov2_x100", "clip_score")
                 if k in a and k in b]
        note = " (RANDOM-INIT extractors: compares the two policies, not comparable with the paper)" \
            if eg.get("random_init_extractors") else ""
        print(f"  eval_gen: init -> final policy on {eg['heldout_prompts']} held-out prompts: {', '.join(parts)}{note}; "
              f"{REPORTS_DIR / 'eval_gen'}/metrics.png")
    print()


if __name__ == "__main__":
    main()
