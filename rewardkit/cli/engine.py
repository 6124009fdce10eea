"""The options that pick a batch engine (``--manifest``, ``--engine``, ``--address``, ``--workers``), shared by
``rewardkit render`` and ``rewardkit score``, and the report of a manifest run."""

from __future__ import annotations

import click

from rewardkit.cli.errors import UserError

MAX_LISTED = 20  # failures listed on stderr (all of them are in the summary / results table)


def engine_options(f):
    """``--manifest``, ``--engine``, ``--address`` and ``--workers`` on a command."""
    from pathlib import Path

    for opt in reversed([
        click.option("--manifest", type=click.Path(path_type=Path), default=None,
                     help="Items from a manifest file (.parquet, .csv, .jsonl: columns mesh, prompt, optional id; "
                          "mesh paths relative to the manifest's folder). Items a previous run finished are skipped."),
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Where the work runs: this machine, or a Ray cluster through Ray Data "
                          "(pip install 'rewardkit[ray]'; needs --manifest)."),
        click.option("--address", default=None,
                     help="With --engine ray: 'auto' (this machine's cluster) or 'ray://HOST:10001'; "
                          "default: start a local Ray instance."),
    ]):
        f = opt(f)
    return f


def make_engine(engine: str, address: str | None, workers: int | None, manifest) -> object:
    """The engine the options name (usage errors as one line, exit 2)."""
    from rewardkit.engines import LocalEngine, RayEngine

    if workers is not None and workers < 1:
        raise UserError("--workers must be >= 1")
    if engine == "ray":
        if manifest is None:
            raise UserError("--engine ray reads its items from --manifest FILE")
        return RayEngine(address=address, actors=workers)
    if address is not None:
        raise UserError("--address is for --engine ray")
    return LocalEngine(workers=workers or 1)


def report(run, what: str, where: str) -> None:
    """Counts on stdout; failures (the first MAX_LISTED) on stderr."""
    click.echo(f"{what} {run.done} of {run.total} items ({run.skipped} already done, {run.failed} failed) "
               f"on the {run.engine} engine in {run.seconds:.1f} s; {where}")
    failed = [r for r in run.records if r.get("error")]
    if failed:
        click.echo(f"{len(failed)} failed:", err=True)
        for r in failed[:MAX_LISTED]:
            click.echo(f"  {r['id']}: {r['error']}", err=True)
        if len(failed) > MAX_LISTED:
            click.echo(f"  ... and {len(failed) - MAX_LISTED} more", err=True)
