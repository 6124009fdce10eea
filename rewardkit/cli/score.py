"""``rewardkit score``: score meshes against a prompt with exported scorers (and baselines).

Exit codes: 0 all scored; 1 some meshes could not be scored (the rest are); 2 usage error, bad scorer
directory, version mismatch or a device this machine does not have. Progress goes to stderr (a bar on
a terminal, a line every ~10 % otherwise), so ``--json`` keeps stdout one JSON document.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import click

from rewardkit.cli.engine import engine_options, make_engine, report
from rewardkit.cli.errors import UserError

BASELINE_PREFIXES = ("clip-multiview:", "hps-multiview:")


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    """CSV rows ``mesh,prompt`` (a header row naming ``mesh`` and ``prompt`` is optional). Relative mesh
    paths are resolved against the CSV's folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise click.UsageError(f"--pairs-file {path}: {exc.strerror or exc}") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["mesh", "prompt"]:
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise click.UsageError(f"--pairs-file {path}: row {n} is not 'mesh,prompt': {row}")
        mesh = Path(row[0].strip())
        if not mesh.is_absolute():
            mesh = path.parent / mesh
        out.append((str(mesh), row[1].strip()))
    if not out:
        raise click.UsageError(f"--pairs-file {path}: no mesh,prompt rows")
    return out


def _load_scorers(specs: tuple[str, ...], baseline_arch: str | None, device: str):
    from rewardkit.scoring.api import as_scorer_set
    from rewardkit.scoring.baselines import load_baseline

    loaded = []
    for spec in specs:
        prefix = next((p for p in BASELINE_PREFIXES if spec.startswith(p)), None)
        if prefix is not None and not Path(spec).exists():
            loaded.append(load_baseline(prefix[:-1], spec[len(prefix):], arch=baseline_arch, device=device))
        else:
            loaded.append(spec)
    return as_scorer_set(loaded, device=device)


def _score_manifest(manifest, out, scorers, engine, address, workers, device, batch_size, render_size, up,
                    progress, other_inputs) -> None:
    if manifest is None or out is None:
        raise click.UsageError("--manifest FILE and --out RESULTS.jsonl go together (and --engine ray needs them)")
    if other_inputs:
        raise click.UsageError("with --manifest, give no MESHES, --pairs-file, --json or --verbose "
                               "(the results go to --out)")
    scorers = scorers or tuple(filter(None, os.environ.get("REWARDKIT_SCORER", "").split(os.pathsep)))
    if not scorers:
        raise click.UsageError("no scorer: pass --scorer DIR (an exported scorer or scorer set) or set REWARDKIT_SCORER")
    if any(s.startswith(BASELINE_PREFIXES) and not Path(s).exists() for s in scorers):
        raise click.UsageError("with --manifest, --scorer names exported scorer folders or Hub ids (no baselines)")
    if batch_size < 1:
        raise click.UsageError("--batch-size must be >= 1")
    from rewardkit.engines import ScoreJob, score_manifest
    from rewardkit.io import MeshLimits

    runner = make_engine(engine, address, workers, manifest)
    job = ScoreJob(scorers=tuple(scorers), device=device, batch_size=batch_size, render_size=render_size, up=up,
                   limits=MeshLimits.from_env())
    if engine == "local":
        from rewardkit.devices import resolve_device
        from rewardkit.scoring.errors import ScorerError

        try:
            runner.scorer_set = _load_scorers(scorers, None, resolve_device(device, what="--device"))
        except ScorerError as exc:
            raise UserError(str(exc)) from None
    run = score_manifest(manifest, out, runner, job, progress=progress)
    report(run, "scored", f"results: {out}")
    sys.exit(1 if run.failed else 0)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


@click.command()
@click.argument("meshes", nargs=-1, type=click.Path(path_type=Path))
@click.option("--prompt", "-p", default=None, help="The text prompt the meshes were generated for.")
@click.option("--scorer", "scorers", multiple=True, metavar="DIR",
              help="Exported scorer or scorer-set directory (repeatable), or a baseline as "
                   "clip-multiview:WEIGHTS / hps-multiview:WEIGHTS (local file). Default: $REWARDKIT_SCORER.")
@click.option("--pairs-file", type=click.Path(path_type=Path), default=None,
              help="CSV of mesh,prompt rows (scored in addition to MESHES).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option("--verbose", "-v", is_flag=True, help="Also print each view's score and the scorers used.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Meshes per model forward.")
@click.option("--render-size", type=int, default=None,
              help="Override the render resolution recorded in the scorers (default: as trained).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... or auto.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress on stderr (a bar on a terminal, else a line every ~10 %% of the meshes).")
@click.option("--baseline-arch", default=None, help="open_clip architecture (or JSON config) for baseline weights.")
@click.option("--up", default="+y", show_default=True, type=click.Choice(["+x", "-x", "+y", "-y", "+z", "-z"]))
@engine_options
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="With --manifest: the results table to write (JSON lines, one record per item; a re-run "
                   "skips the items it holds without an error).")
@click.option("--workers", type=int, default=None,
              help="With --engine ray: actors, each with one loaded scorer set (default: one per CPU of the "
                   "cluster, or per GPU where it has GPUs).")
def score(meshes, prompt, scorers, pairs_file, as_json, verbose, batch_size, render_size, device, progress,
          baseline_arch, up, manifest, engine, address, out, workers) -> None:
    """Score MESHES against --prompt with each scorer (e.g. the global and local stage models).

    Each mesh is rendered once with the camera protocol the scorers were trained on. A mesh that cannot
    be read is reported and the others are still scored (exit code 1). With --manifest the items
    (mesh, prompt, id) come from a file of any size and the results go to --out.
    """
    if manifest is not None or engine != "local" or out is not None:
        _score_manifest(manifest, out, scorers, engine, address, workers, device, batch_size, render_size, up,
                        progress, bool(meshes or pairs_file or as_json or verbose))
        return
    if workers is not None:
        raise click.UsageError("--workers is for --engine ray (local scoring runs in this process)")
    pairs: list[tuple[str, str]] = []
    if meshes:
        if not prompt:
            raise click.UsageError("--prompt is required when meshes are given on the command line")
        pairs += [(str(m), prompt) for m in meshes]
    if pairs_file is not None:
        pairs += _read_pairs(pairs_file)
    if not pairs:
        raise click.UsageError("nothing to score: give MESH arguments with --prompt, or --pairs-file")
    if not scorers:
        env = os.environ.get("REWARDKIT_SCORER")
        if not env:
            raise click.UsageError("no scorer: pass --scorer DIR (an exported scorer or scorer set) or set REWARDKIT_SCORER")
        scorers = tuple(env.split(os.pathsep))
    if batch_size < 1:
        raise click.UsageError("--batch-size must be >= 1")

    from rewardkit.devices import resolve_device
    from rewardkit.progress import progress_bar
    from rewardkit.scoring.api import score_meshes
    from rewardkit.scoring.errors import ScorerError

    device = resolve_device(device, what="--device")  # DeviceError: one line, exit 2
    try:
        scorer_set = _load_scorers(scorers, baseline_arch, device)
    except ScorerError as exc:  # bad scorer directory or version mismatch
        raise UserError(str(exc)) from None
    for s in scorer_set.scorers.values():
        for w in s.load_warnings:
            click.echo(f"warning: {s.source}: {w}", err=True)

    with progress_bar("score", disable=not progress) as bar:
        task = bar.add_task("", total=len(pairs))
        results = score_meshes([m for m, _ in pairs], [p for _, p in pairs], scorer_set, batch_size=batch_size,
                               per_view=verbose, render_size=render_size, up=up,
                               progress=lambda done, total: bar.update(task, completed=done))
    names = scorer_set.names()
    failed = [r for r in results if not r.ok]
    if as_json:
        doc = {"scorers": scorer_set.describe(), "results": [r.to_dict() for r in results]}
        click.echo(json.dumps(doc, indent=2))
    else:
        if verbose:
            for k, s in scorer_set.items():
                click.echo(f"# {k}: {s.kind}, stage={s.stage}, modes={','.join(s.modes)}, "
                           f"camera={s.camera.name}@{s.render_size}px, from {s.source}")
        width = max(len("mesh"), *(len(r.mesh) for r in results))
        std_names = [n for n in names if any(n in r.std for r in results)]  # ensembles: their members' std
        click.echo("  ".join(["mesh".ljust(width), *(n.rjust(10) for n in names),
                              *(f"{n}_std".rjust(10) for n in std_names), "prompt"]))
        for r in results:
            if not r.ok:
                continue
            click.echo("  ".join([r.mesh.ljust(width), *(_fmt(r.scores.get(n)).rjust(10) for n in names),
                                  *(_fmt(r.std.get(n)).rjust(10) for n in std_names), r.prompt]))
            if verbose:
                for n in names:
                    pv = r.per_view.get(n)
                    if pv:
                        click.echo(f"    {n} per view: " + " ".join(f"{x:.4f}" for x in pv))
    sys.stdout.flush()
    for r in results:
        for w in r.warnings:
            click.echo(f"warning: {r.mesh}: {w}", err=True)
    if failed:
        for r in failed:
            click.echo(f"error: {r.error if r.error and r.error.startswith(r.mesh) else f'{r.mesh}: {r.error}'}",
                       err=True)
        click.echo(f"{len(failed)} of {len(results)} meshes could not be scored", err=True)
        sys.exit(1)
