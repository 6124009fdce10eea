"""``rewardkit export``: trained stage models (``rewardkit train`` output folders) -> one scorer set."""

from __future__ import annotations

import click

from rewardkit.cli.errors import UserError


@click.command("export")
@click.option("--run", "runs", multiple=True, required=True, metavar="STAGE=DIR",
              help="A training run folder per stage (`rewardkit train --out DIR`), e.g. global=out/global. Repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="The scorer set folder to write (replaced if it exists): what `rewardkit score --scorer` reads.")
@click.option("--name", default="rewardkit", show_default=True, help="Scorer names are NAME-<stage>.")
@click.option("--members", type=int, default=None,
              help="> 1: export each stage as an ensemble of the model and MEMBERS-1 reward heads (default 1).")
@click.option("--ensemble-config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="YAML or JSON file of EnsembleConfig fields (bootstrap, seed, epochs, lr, ...).")
@click.option("--render-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="A render folder whose camera protocol and render config the scorers use "
                   "(default: the first render folder of each run's items table).")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write the ensembles' report (JSON).")
def export(runs: tuple[str, ...], out_dir: str, name: str, members: int | None, ensemble_config: str | None,
           render_dir: str | None, report: str | None) -> None:
    """Export trained GLOBAL/LOCAL reward models as one scorer set, ensembles included.

    Example: rewardkit export --run global=out/global --run local=out/local --out scorers/
    """
    import yaml

    from rewardkit.config import ConfigError, from_dict
    from rewardkit.train.export import STAGES, ExportError, export_scorers
    from rewardkit.train.ensemble import EnsembleConfig

    stage_runs = {}
    for spec in runs:
        stage, sep, path = spec.partition("=")
        if not sep or stage not in STAGES:
            raise UserError(f"--run {spec!r}: expected STAGE=DIR with STAGE one of {', '.join(STAGES)}")
        stage_runs[stage] = path
    fields = (yaml.safe_load(open(ensemble_config)) or {}) if ensemble_config else {}
    if members is not None:
        fields = {**fields, "members": members}
    try:
        ecfg = from_dict(EnsembleConfig, fields, key="ensemble")
        export_scorers(stage_runs, out_dir, name=name, ensemble=ecfg, render_dir=render_dir, report=report,
                       log=click.echo)
    except (ConfigError, ExportError, ValueError) as exc:
        raise UserError(str(exc)) from None
