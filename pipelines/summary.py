"""``python -m pipelines.summary``: the closing lines of the demo (scripts/demo.sh prints them after
``dvc repro``, so a run that had nothing to do still says where things are). Reads the reports only."""

from __future__ import annotations

import json

from pipelines._common import REPORTS_DIR, chdir_root


def main() -> None:
    chdir_root()
    metrics, rl = REPORTS_DIR / "metrics.json", REPORTS_DIR / "rl.json"
    if not metrics.exists():
        raise SystemExit(f"{metrics}: no report yet; run `dvc repro` first")
    from pipelines.evaluate import print_summary

    print_summary(json.loads(metrics.read_text()), title="rewardkit demo pipeline: done")
    if rl.exists():
        r = json.loads(rl.read_text())
        if r.get("r_high_first") is not None:
            print(f"  rl:       R_high {r['r_high_first']:.3f} -> {r['r_high_last']:.3f}, R_low {r['r_low_first']:.3f} -> "
                  f"{r['r_low_last']:.3f} over {r['steps']} Hi-GRPO steps (first vs last {r['window']}-step means); "
                  f"policy in data/rl/policy/, plots in {REPORTS_DIR}/rl/")
    print()


if __name__ == "__main__":
    main()
