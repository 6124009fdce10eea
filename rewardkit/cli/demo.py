"""``rewardkit demo``: the procedural demo data set and its rule-based stand-in annotator."""

from __future__ import annotations

from pathlib import Path

import click

from rewardkit.cli.errors import CommandGroup, UserError


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.group(cls=CommandGroup)
def demo() -> None:
    """Generate the bundled demo (prompted objects + degradations) and label it with rules."""


@demo.command("generate")
@click.option("--out", "out", default="data/demo", show_default=True, type=click.Path(path_type=Path),
              help="Output folder: meshes/*.glb, items.parquet, candidates.parquet.")
@click.option("--prompts-per-category", default=8, show_default=True, type=int, help="Training prompts per category.")
@click.option("--holdout-per-category", default=2, show_default=True, type=int, help="Held-out prompts per category.")
@click.option("--categories", default=None, help="Comma-separated subset of chair,table,mug,lamp,bottle,car.")
@click.option("--geometry", default=None, help="Comma-separated geometry degradations (default: all).")
@click.option("--texture", default=None, help="Comma-separated texture degradations (default: all).")
@click.option("--mixed", default=2, show_default=True, type=int, help="Candidates per prompt with one geometry + one texture degradation.")
@click.option("--seed", default=0, show_default=True, type=int)
def generate_cmd(out, prompts_per_category, holdout_per_category, categories, geometry, texture, mixed, seed) -> None:
    """Write demo meshes (GLB) with an items table and a candidates sidecar (degradation per item)."""
    from rich.progress import Progress

    from rewardkit.demo import DemoConfig, generate
    from rewardkit.demo.degrade import GEOMETRY, TEXTURE
    from rewardkit.demo.objects import CATEGORIES

    try:
        cfg = DemoConfig(
            prompts_per_category=prompts_per_category, holdout_per_category=holdout_per_category,
            categories=_csv(categories) or CATEGORIES, geometry=_csv(geometry) if geometry is not None else GEOMETRY,
            texture=_csv(texture) if texture is not None else TEXTURE, mixed=mixed, seed=seed,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with Progress() as bar:
        task = bar.add_task("generate", total=None)
        items, _cands = generate(cfg, out, progress=lambda n, t: bar.update(task, completed=n, total=t))
    n_prompts = items["prompt_id"].n_unique()
    click.echo(f"wrote {items.height} candidates for {n_prompts} prompts to {out}")


@demo.command("label")
@click.option("--pairs", "pairs_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--candidates", "cands_path", default="data/demo/candidates.parquet", show_default=True,
              type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="preferences.parquet to write.")
@click.option("--noise", default=0.0, show_default=True, type=float, help="Probability of replacing an answer by another.")
@click.option("--seed", default=0, show_default=True, type=int)
def label_cmd(pairs_path, cands_path, out, noise, seed) -> None:
    """Label pairs with the rule-based stand-in annotator (rows get source=synthetic)."""
    from rewardkit.data.tables import read_pairs, write_table
    from rewardkit.demo import label_pairs, read_candidates

    prefs = label_pairs(read_pairs(pairs_path), read_candidates(cands_path), noise=noise, seed=seed)
    write_table(prefs, out, "preferences")
    counts = prefs.group_by("question", "label").len().sort("question", "label")
    click.echo(f"wrote {prefs.height} synthetic preferences to {out}")
    for q, lab, n in counts.iter_rows():
        click.echo(f"  {q:6s} {lab:4s} {n}")
