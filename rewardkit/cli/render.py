"""``rewardkit render``: render meshes into render folders (views per mode, grids, metadata)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rewardkit.cli.engine import engine_options, make_engine, report
from rewardkit.cli.errors import UserError

from rewardkit.render.renderer import MODES


def _modes(ctx, param, value: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise click.BadParameter(f"unknown modes {bad}; choose from {', '.join(MODES)}")
    return modes


@click.command()
@click.argument("meshes", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder (one render folder per mesh).")
@click.option("--protocol", default="orbit6", show_default=True, help="Camera preset (orbit4, orbit6, orbit8, toys4k24) or 'az:el,az:el,...'.")
@click.option("--size", type=int, default=None, help="Image size in pixels (default: the protocol's, 512).")
@click.option("--modes", default="rgb,geometry,normal", show_default=True, callback=_modes, help=f"Comma-separated, from {', '.join(MODES)}.")
@click.option("--up", default="+y", show_default=True, type=click.Choice(["+x", "-x", "+y", "-y", "+z", "-z"]), help="Up axis of the source files.")
@click.option("--workers", type=int, default=None,
              help="Worker processes, each with its own GL context (default 1); with --engine ray, actors "
                   "(default: one per CPU of the cluster, or per GPU where it has GPUs).")
@click.option("--background", default="255,255,255", show_default=True, help="Background colour as R,G,B.")
@engine_options
def render(meshes, out, protocol, size, modes, up, workers, background, manifest, engine, address) -> None:
    """Render MESHES (or the items of --manifest) from a pinned multi-view camera protocol.

    A mesh that fails does not stop the batch: the others render, failures are listed with their
    reasons in OUT/summary.json, and the exit code is 1. With --manifest each item renders into
    OUT/<id>/, and a re-run skips the items whose render folder is complete.
    """
    from rewardkit.render import RenderConfig, render_batch

    try:
        bg = tuple(int(x) for x in background.split(","))
        assert len(bg) == 3 and all(0 <= x <= 255 for x in bg)
    except (ValueError, AssertionError):
        raise click.BadParameter(f"expected R,G,B with values 0-255, got {background!r}", param_hint="--background") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the output folder: {exc.strerror or exc}") from None
    if manifest is not None and meshes:
        raise click.UsageError("give MESHES or --manifest, not both")
    if manifest is None and not meshes:
        raise click.UsageError("nothing to render: give MESHES or --manifest FILE")
    runner = make_engine(engine, address, workers, manifest)
    if manifest is not None:
        from rewardkit.engines import ManifestError, render_manifest

        try:
            run = render_manifest(manifest, out, runner, protocol=protocol, modes=modes, size=size, up=up,
                                  config=RenderConfig(background=bg))
        except ManifestError as exc:
            raise UserError(str(exc)) from None
        except ValueError as exc:  # bad protocol spec and similar
            raise click.UsageError(str(exc)) from None
        report(run, "rendered", f"summary: {out / 'summary.json'}")
        sys.exit(1 if run.failed else 0)
    try:
        summary = render_batch(
            meshes, out, protocol, modes, size=size, workers=workers or 1, up=up, config=RenderConfig(background=bg)
        )
    except ValueError as exc:  # bad protocol spec and similar
        raise click.UsageError(str(exc)) from None
    for item in summary.rendered:
        for warning in item["warnings"]:
            click.echo(f"warning: {item['mesh_path']}: {warning}", err=True)
    click.echo(f"rendered {len(summary.rendered)} of {len(meshes)} meshes into {out} (summary: {out / 'summary.json'})")
    if summary.failed:
        click.echo(f"{len(summary.failed)} failed:", err=True)
        for f in summary.failed:
            click.echo(f"  {f['mesh_path']}: {f['error']}", err=True)
        sys.exit(1)
