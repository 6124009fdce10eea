"""The three tables of rewardkit, as polars schemas, with readers and writers that validate them.

``items``       one generated candidate (a mesh for a prompt) and where its renders live.
``pairs``       two candidates of the same prompt shown side by side; the A/B order is randomized at
                sampling time and recorded here, so answers map back to items.
``preferences`` one answer: one annotator x one pair x one question.

All tables are parquet files written with polars. ``validate_*`` raise ``TableError`` naming the file
(when known) and the problem.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from rewardkit.errors import RewardkitError

ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "prompt_id": pl.Utf8,
    "prompt": pl.Utf8,
    "mesh_path": pl.Utf8,
    "mesh_sha256": pl.Utf8,
    "generator": pl.Utf8,
    "seed": pl.Int64,
    "render_dir": pl.Utf8,
}

PAIRS_SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.Utf8,
    "prompt_id": pl.Utf8,
    "item_a": pl.Utf8,
    "item_b": pl.Utf8,
}

PREFERENCES_SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.Utf8,
    "question": pl.Utf8,  # "global" | "local"
    "label": pl.Utf8,  # "a" | "b" | "tie" | "both_bad"
    "annotator": pl.Utf8,
    "lead_time_s": pl.Float64,
    "created_at": pl.Utf8,  # ISO 8601
    "source": pl.Utf8,  # "labelstudio" | "synthetic" | ...
    "comment": pl.Utf8,  # the annotator's free-text comment on the task (null when none)
}

QUESTIONS = ("global", "local")
LABELS = ("a", "b", "tie", "both_bad")

SCHEMAS = {"items": ITEMS_SCHEMA, "pairs": PAIRS_SCHEMA, "preferences": PREFERENCES_SCHEMA}
# Columns added after a table's first version: a table written before them reads with nulls there.
OPTIONAL_COLUMNS = {"items": (), "pairs": (), "preferences": ("comment",)}


class TableError(RewardkitError, ValueError):
    """A table is missing columns, has wrong types or invalid values."""


def _where(path: str | Path | None) -> str:
    return f"{path}: " if path is not None else ""


def conform(df: pl.DataFrame, table: str, path: str | Path | None = None) -> pl.DataFrame:
    """Check ``df`` against the named schema; return it with exactly the schema's columns, in order and cast.
    Optional columns (``OPTIONAL_COLUMNS``, e.g. the preferences' ``comment``) that ``df`` lacks are null."""
    schema = SCHEMAS[table]
    absent = [c for c in OPTIONAL_COLUMNS[table] if c not in df.columns]
    if absent:
        df = df.with_columns([pl.lit(None, dtype=schema[c]).alias(c) for c in absent])
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise TableError(f"{_where(path)}{table} table is missing columns {missing} (has {df.columns})")
    try:
        out = df.select([pl.col(c).cast(t, strict=True) for c, t in schema.items()])
    except Exception as exc:  # polars raises several exception types for bad casts
        raise TableError(f"{_where(path)}{table} table has a column of the wrong type: {exc}") from exc
    if table == "preferences":
        bad_q = out.filter(~pl.col("question").is_in(QUESTIONS))
        if bad_q.height:
            raise TableError(f"{_where(path)}preferences: unknown question values {bad_q['question'].unique().to_list()}")
        bad_l = out.filter(~pl.col("label").is_in(LABELS))
        if bad_l.height:
            raise TableError(f"{_where(path)}preferences: unknown label values {bad_l['label'].unique().to_list()}")
    if table == "pairs":
        selfp = out.filter(pl.col("item_a") == pl.col("item_b"))
        if selfp.height:
            raise TableError(f"{_where(path)}pairs: self-pairs {selfp['pair_id'].to_list()}")
    key = {"items": ["item_id"], "pairs": ["pair_id"], "preferences": None}[table]
    if key is not None:
        dup = out.filter(pl.col(key[0]).is_duplicated())
        if dup.height:
            raise TableError(f"{_where(path)}{table}: duplicate {key[0]} values {dup[key[0]].unique().to_list()[:10]}")
    return out


def empty(table: str) -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMAS[table])


def read_table(path: str | Path, table: str) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: {table} table not found")
    try:
        df = pl.read_parquet(path)
    except Exception as exc:
        raise TableError(f"{path}: cannot read parquet: {exc}") from exc
    return conform(df, table, path)


def write_table(df: pl.DataFrame, path: str | Path, table: str) -> Path:
    path = Path(path)
    out = conform(df, table, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.write_parquet(path)
    return path


def read_items(path: str | Path) -> pl.DataFrame:
    return read_table(path, "items")


def read_pairs(path: str | Path) -> pl.DataFrame:
    return read_table(path, "pairs")


def read_preferences(path: str | Path) -> pl.DataFrame:
    return read_table(path, "preferences")
