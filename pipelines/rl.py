"""Stage ``rl``: Hi-GRPO on a tiny warm-started policy, rewarded by the exported scorer set.

The run's :class:`rewardkit.rl.HiGRPOConfig` is the ``rl`` section of params.yaml; the pipeline fixes
only where it writes (``data/rl/``: warm-started policy, checkpoints, logs, final policy, samples before
and after). A small report for DVC goes to ``reports/``: ``rl.json`` (metrics: the global and local rewards at the
start and end of the run, before/after evaluation, the reward-hacking guard's flags), ``rl_rewards.csv``
(the reward curve, one row per step: global/local reward and every term's mean and within-group std, the guard's
agreement and flag per learned term) and ``rl/`` (``reward_curve.png``, the before/after renders,
``prompts.csv`` + ``prompts.png``: per prompt the global reward and every global term before and after, flagged
prompts marked, and ``audit/step-N.png``: the guard's audit grids). The policy's samples written as
candidates (``rl.candidates``) are in ``data/rl/candidates/`` (a ``generate.source: own`` folder), the
audits' meshes and pairs in ``data/rl/audit/step-N/``.

Stage ``rl_penalised`` (``python -m pipelines.rl penalised``) runs the same ``rl`` params again from the
same warm-started policy (``data/rl/init_policy``) with every learned (scorer) term's reward replaced by
``mean - k * std`` over its ensemble members (``rl_penalised.uncertainty_penalty``: k), into
``data/rl_penalised/`` and ``reports/rl_penalised*``. Its ``compare.csv`` + ``compare.png`` put the two arms
side by side per prompt: the global reward, the IoU anchor and the scorer term before RL, after the plain run and after
the penalised one, and which learned terms the guard flagged in each arm.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipelines._common import REPORTS_DIR, chdir_root, params, step
from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer
from rewardkit.reporting.rl_run import penalised_params, write_comparison, write_run_report

RL_DIR = Path("data/rl")  # rl: init_policy/, checkpoints/, policy/, metrics.*, samples_before|after/
PEN_DIR = Path("data/rl_penalised")  # the uncertainty-penalised arm (stage rl_penalised)
ARMS = {"rl": RL_DIR, "rl_penalised": PEN_DIR}  # reports/<arm>.json, <arm>_rewards.csv, <arm>/


def progress_to_stdout() -> None:
    """The trainer's one line per step, on stdout (next to the stage's own lines), printed once."""
    from rewardkit.progress import log_progress

    log_progress(sys.stdout, "  %(message)s")


def run_arm(p: dict, arm: str) -> dict:
    """One Hi-GRPO run of the params ``p`` into its folder (rebuilt: a DVC out) and its reports."""
    cfg = HiGRPOConfig.from_dict({**p, "output_dir": str(ARMS[arm])})
    if ARMS[arm].exists():
        shutil.rmtree(ARMS[arm])  # a DVC out is rebuilt from scratch (resume is for interactive `rewardkit rl`)
    with step(arm):
        trainer = HiGRPOTrainer(cfg)
        summary = trainer.train(resume=False)
    write_run_report(summary, trainer.records, ARMS[arm], REPORTS_DIR / f"{arm}.json",
                     REPORTS_DIR / f"{arm}_rewards.csv", REPORTS_DIR / arm)
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["penalised"]):
        raise SystemExit("usage: python -m pipelines.rl [penalised]")
    chdir_root()
    p = dict(params("rl"))
    if "output_dir" in p:
        raise SystemExit("params.yaml rl.output_dir: the pipeline writes the run to data/rl; remove the key")
    progress_to_stdout()
    if not argv:
        run_arm(p, "rl")
        return
    k = float((params("rl_penalised") or {}).get("uncertainty_penalty", 1.0))
    if not (RL_DIR / "init_policy" / "config.json").is_file():
        raise SystemExit(f"rl_penalised starts from {RL_DIR}/init_policy/ and it is missing: run `dvc repro rl` first")
    pen = {**penalised_params(p, k), "policy_path": str(RL_DIR / "init_policy")}  # the plain arm's warm start
    summary = run_arm(pen, "rl_penalised")
    write_comparison(RL_DIR, REPORTS_DIR / "rl.json", PEN_DIR, summary.get("guard"), REPORTS_DIR / "rl_penalised", k)


if __name__ == "__main__":
    main()
