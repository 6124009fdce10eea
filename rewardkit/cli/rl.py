"""``rewardkit rl``: Hi-GRPO training of an autoregressive text-to-3D policy with rewardkit rewards."""

from __future__ import annotations

import json

import click

from rewardkit.cli.options import config_options

from rewardkit.cli.errors import UserError


@click.command("rl")
@config_options("YAML/JSON Hi-GRPO config (a top-level 'rl:' section is used if present).",
                "sampling.temperature=0.7", required=True)
@click.option("--steps", type=int, default=None, help="Override config steps.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, help="Override config output_dir.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from the latest checkpoint in output_dir.")
@click.option("--warm-start-only", is_flag=True, help="Only build and warm-start the tiny policy, then exit.")
def rl(config_path: str, steps: int | None, output_dir: str | None, resume: bool, warm_start_only: bool, sets: tuple[str, ...]) -> None:
    """Train a policy with Hi-GRPO (two steps: global shape, then local detail) as configured in FILE.

    Writes under output_dir: metrics.jsonl/.csv (every reward term per step: mean and within-group
    std), reward_curve.png, metrics.json, samples_before/ and samples_after/ (renders), checkpoints/
    and the final policy/ (a Hugging Face checkpoint). One progress line per step goes to stderr.
    Exit code 2 for a bad config, override or device.
    """
    from rewardkit.devices import check_accelerator
    from rewardkit.progress import log_progress
    from rewardkit.rl.trainer import HiGRPOTrainer, load_config

    overrides = list(sets) + ([f"output_dir={json.dumps(output_dir)}"] if output_dir else [])
    cfg = load_config(config_path, overrides)  # ConfigError: exit 2
    check_accelerator(cfg.accelerator)
    log_progress(fmt="%(asctime)s %(levelname)s %(name)s: %(message)s")  # stderr, each line once
    try:
        trainer = HiGRPOTrainer(cfg)
    except FileNotFoundError as exc:  # policy_path without a model (and warm_start off)
        raise UserError(str(exc)) from None
    if warm_start_only:
        click.echo(f"policy ready at {cfg.policy_path}")
        return
    summary = trainer.train(steps=steps, resume=resume)
    if trainer.is_main:
        click.echo(json.dumps(summary, indent=2))
