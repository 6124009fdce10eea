"""``rewardkit rl``: Hi-GRPO training of an autoregressive text-to-3D policy with rewardkit rewards."""

from __future__ import annotations

import json
import logging

import click


@click.command("rl")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="YAML/JSON Hi-GRPO config (a top-level 'rl:' section is used if present).")
@click.option("--steps", type=int, default=None, help="Override config steps.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, help="Override config output_dir.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from the latest checkpoint in output_dir.")
@click.option("--warm-start-only", is_flag=True, help="Only build and warm-start the tiny policy, then exit.")
@click.option("--set", "sets", multiple=True, metavar="KEY=JSON", help="Override a top-level config key, e.g. --set lr=1e-5.")
def rl(config_path: str, steps: int | None, output_dir: str | None, resume: bool, warm_start_only: bool, sets: tuple[str, ...]) -> None:
    """Train a policy with Hi-GRPO (two steps: global shape, then local detail) as configured in FILE.

    Writes under output_dir: metrics.jsonl/.csv (every reward term per step: mean and within-group
    std), reward_curve.png, metrics.json, samples_before/ and samples_after/ (renders), checkpoints/
    and the final policy/ (a Hugging Face checkpoint).
    """
    from rewardkit.rl.trainer import HiGRPOTrainer, load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {}
    for s in sets:
        key, _, value = s.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if output_dir:
        overrides["output_dir"] = output_dir
    cfg = load_config(config_path, overrides)
    trainer = HiGRPOTrainer(cfg)
    if warm_start_only:
        click.echo(f"policy ready at {cfg.policy_path}")
        return
    summary = trainer.train(steps=steps, resume=resume)
    if trainer.is_main:
        click.echo(json.dumps(summary, indent=2))
