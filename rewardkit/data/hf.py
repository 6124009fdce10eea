"""Preferences as a Hugging Face ``datasets`` dataset, the format reward-model users share data in.

One row per preferences row (annotator x pair x question), joined with the pair, its prompt and the
render paths of both candidates::

    pair_id, question, label, annotator, lead_time_s, created_at, source, comment,
    prompt_id, prompt, item_a, item_b, chosen, rejected,
    a_render_dir, b_render_dir, a_grid_geometry, a_grid_rgb, b_grid_geometry, b_grid_rgb

``chosen`` / ``rejected`` are the item ids for ``a`` / ``b`` labels and null for ``tie`` and
``both_bad``. Grid paths follow the render-folder contract (``<render_dir>/grid_<mode>.png``) and are
absolute: a relative ``render_dir`` of the items table is taken relative to ``render_root`` (default: the
working directory, as ``rewardkit annotate push`` does). With ``embed_images=True`` (CLI:
``rewardkit annotate pull --hf-embed-images``) the grid columns become ``datasets.Image`` features, so
``save_to_disk`` (and ``push_to_hub``) carry the pixels instead of paths of this machine.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from rewardkit.data.tables import TableError, conform

GRID_MODES = ("geometry", "rgb")


def grid_path(render_dir: str | Path, mode: str) -> Path:
    """The grid image of ``mode`` in a render folder."""
    return Path(render_dir) / f"grid_{mode}.png"


def preferences_table_joined(
    preferences: pl.DataFrame,
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    *,
    modes: tuple[str, ...] = GRID_MODES,
    render_root: str | Path | None = None,
) -> pl.DataFrame:
    """Preferences joined with pairs, prompts and absolute render paths (a polars frame)."""
    root = Path(render_root) if render_root is not None else Path.cwd()
    prefs = conform(preferences, "preferences")
    pairs = conform(pairs, "pairs")
    items = conform(items, "items")
    unknown = sorted(set(prefs["pair_id"].to_list()) - set(pairs["pair_id"].to_list()))
    if unknown:
        raise TableError(f"preferences refer to pairs not in the pairs table: {unknown[:10]}")
    it = items.select("item_id", "prompt", "render_dir").with_columns(
        pl.col("render_dir").map_elements(lambda d: str((root / d).absolute()), return_dtype=pl.Utf8)
    )
    df = prefs.join(pairs, on="pair_id", how="left")
    df = df.join(it.rename({"item_id": "item_a", "render_dir": "a_render_dir"}), on="item_a", how="left")
    df = df.join(it.select("item_id", "render_dir").rename({"item_id": "item_b", "render_dir": "b_render_dir"}), on="item_b", how="left")
    missing = df.filter(pl.col("a_render_dir").is_null() | pl.col("b_render_dir").is_null())
    if missing.height:
        raise TableError(f"pairs refer to items not in the items table: pairs {missing['pair_id'].unique().to_list()[:10]}")
    df = df.with_columns(
        pl.when(pl.col("label") == "a").then(pl.col("item_a")).when(pl.col("label") == "b").then(pl.col("item_b")).otherwise(None).alias("chosen"),
        pl.when(pl.col("label") == "a").then(pl.col("item_b")).when(pl.col("label") == "b").then(pl.col("item_a")).otherwise(None).alias("rejected"),
    )
    grids = []
    for side in ("a", "b"):
        for mode in modes:
            grids.append(
                pl.col(f"{side}_render_dir").map_elements(lambda d, m=mode: str(grid_path(d, m)), return_dtype=pl.Utf8).alias(f"{side}_grid_{mode}")
            )
    df = df.with_columns(grids)
    cols = [
        "pair_id", "question", "label", "annotator", "lead_time_s", "created_at", "source", "comment",
        "prompt_id", "prompt", "item_a", "item_b", "chosen", "rejected", "a_render_dir", "b_render_dir",
    ] + [f"{s}_grid_{m}" for s in ("a", "b") for m in modes]
    return df.select(cols)


def to_hf_dataset(
    preferences: pl.DataFrame,
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    *,
    modes: tuple[str, ...] = GRID_MODES,
    embed_images: bool = False,
    render_root: str | Path | None = None,
):
    """Build a ``datasets.Dataset`` of joined preferences (see module docstring)."""
    import datasets

    df = preferences_table_joined(preferences, pairs, items, modes=modes, render_root=render_root)
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in df.columns if c != "lead_time_s"},
            "lead_time_s": datasets.Value("float64"),
        }
    )
    features = datasets.Features({c: features[c] for c in df.columns})
    ds = datasets.Dataset.from_dict({c: df[c].to_list() for c in df.columns}, features=features)
    if embed_images:
        for side in ("a", "b"):
            for mode in modes:
                col = f"{side}_grid_{mode}"
                absent = [p for p in set(ds[col]) if not Path(p).is_file()]
                if absent:
                    raise FileNotFoundError(f"render grids missing, cannot embed: {sorted(absent)[:10]}")
                ds = ds.cast_column(col, datasets.Image())
    return ds


def save_hf_dataset(
    preferences: pl.DataFrame,
    pairs: pl.DataFrame,
    items: pl.DataFrame,
    out_dir: str | Path,
    *,
    modes: tuple[str, ...] = GRID_MODES,
    embed_images: bool = False,
    render_root: str | Path | None = None,
) -> Path:
    """``to_hf_dataset(...).save_to_disk(out_dir)``; returns ``out_dir``. Load it back with
    ``datasets.load_from_disk``; ``push_to_hub`` works on the loaded dataset."""
    ds = to_hf_dataset(preferences, pairs, items, modes=modes, embed_images=embed_images, render_root=render_root)
    out_dir = Path(out_dir)
    ds.save_to_disk(str(out_dir))
    return out_dir
