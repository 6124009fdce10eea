"""``rewardkit train``: train one stage's reward model from the preferences table and render folders."""

from __future__ import annotations

import json

import click

from rewardkit.cli.options import config_options

from rewardkit.cli.errors import UserError


@click.command("train")
@click.option("--stage", type=click.Choice(["global", "local"]), default=None,
              help="Which reward stage (and preferences question). Overrides the config's `stage`.")
@config_options("YAML or JSON file of TrainConfig fields (see docs/reward-models.md).",
                "model.backbone.name=ViT-B-32")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output folder (config `out_dir`).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as JSON and exit.")
def train(stage: str | None, config_path: str | None, sets: tuple[str, ...], out_dir: str | None,
          print_config: bool) -> None:
    """Train the GLOBAL (geometry views) or LOCAL (rgb views) reward model with Lightning.

    Writes checkpoints, CSV/TensorBoard logs, metrics.json, learning_curve.png and the trained model
    (model/config.json + model/model.safetensors) under the output folder; prints the validation metrics.
    Progress goes to stderr (config `progress_bar`): a bar on a terminal, else one line per epoch.
    Several GPUs or machines: `--set devices=N --set strategy=ddp [--set num_nodes=M]`, under torchrun or
    SLURM for several machines (docs/scale.md); rank 0 alone evaluates and exports.
    Exit code 2 for a bad config, override, device or input table.
    """
    from rewardkit.train.config import load_train_config

    cfg = load_train_config(config_path, sets, stage=stage, out_dir=out_dir)  # ConfigError: exit 2
    if print_config:
        click.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return
    from rewardkit.data.tables import TableError
    from rewardkit.devices import check_accelerator
    from rewardkit.models.backbone import BackboneError
    from rewardkit.train.trainer import train as run

    check_accelerator(cfg.accelerator)
    try:
        result = run(cfg)
    except (TableError, BackboneError, FileNotFoundError) as exc:  # the inputs named by the config
        raise UserError(str(exc)) from None
    if not result.is_global_zero:  # a DDP rank other than 0: rank 0 evaluated, exported and reports
        click.echo(f"rank {result.global_rank} of {result.world_size}: trained; rank 0 evaluated and wrote "
                   f"the outputs in {result.out_dir}", err=True)
        return
    m = result.metrics
    val = m.get("val") or {}
    procs = f" on {result.world_size} processes" if result.world_size > 1 else ""
    lines = [(f"stage {cfg.stage} ({', '.join(m['modes'])}) on {cfg.model.backbone.name}: "
              f"{m['global_step']} steps, {m['epochs']} epochs, {m['fit_seconds']} s{procs}")]
    if val:
        lines.append(f"val: pairwise accuracy {val['pairwise_accuracy']}, tie-band accuracy {val['tie_band_accuracy']} "
                     f"(tau {val['tie_threshold']}), BT loss {val['bt_loss']}, ECE {val['ece']} -> "
                     f"{val['ece_calibrated']} at T={val['temperature']:.3g}  [{val['n_pairs']} pairs]")
    dis = m.get("disentanglement")
    if dis:
        lines.append(f"disentanglement: accuracy {dis.get('accuracy')} on {dis['n_pairs']} pairs differing only in "
                     f"{dis['differs_in']} ({dis['labels_from_question']} labels; ~0.5 expected)")
    lines.append(f"outputs: {result.out_dir} (metrics.json, learning_curve.png"
                 + (f", model in {result.model_dir}" if result.model_dir else "") + ")")
    click.echo("\n".join(lines))
