"""Rounds of the loop: what round r hands to round r+1, and round r+1's training data over all rounds.

Round r+1 of the loop (docs/active-learning.md) selects new pairs where round r's scorers are unsure and
labels them. Training on those alone would forget what the earlier rounds taught (and the earlier rounds'
candidates: the policy's samples drift from them). So the previous-round folder (``data/previous_round``)
accumulates every round's labelled data:

=========================  ===================================================================================
``scorers/``               round r's exported scorer set (replaced each round): active selection's ensemble
``candidates/``            round r's ``data/rl/candidates`` (replaced): the policy's samples, round r+1's pool
``pairs.parquet``          the labelled pairs of rounds 1..r (never selected again)
``preferences.parquet``    their answers (calibrate the selection's temperature; training data)
``items.parquet``          the paired items of rounds 1..r, ``render_dir`` pointing into ``renders/``
``renders/<item_id>/``     their renders (copied: the next round's ``render`` stage replaces data/renders)
``rounds.json``            one entry per hand-over: the round, its counts, and where it came from
=========================  ===================================================================================

:func:`hand_over` writes it from a finished round's ``data`` folder (``rewardkit loop hand-over``);
:func:`with_previous_rounds` joins it to the current round's tables for training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from rewardkit.data.tables import TableError, conform, read_items, read_pairs, read_preferences, write_table
from rewardkit.errors import RewardkitError

ROUNDS_FILE = "rounds.json"


class HandOverError(RewardkitError, ValueError):
    """A round cannot be handed over (a missing table, a render folder that is not there, an item id that
    names different items in two rounds)."""


def _read_rounds(prev: Path) -> list[dict[str, Any]]:
    f = prev / ROUNDS_FILE
    if not f.is_file():
        return []
    try:
        rounds = json.loads(f.read_text())
    except ValueError as exc:
        raise HandOverError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(rounds, list):
        raise HandOverError(f"{f}: expected a list of rounds")
    return rounds


def _union(old: pl.DataFrame | None, new: pl.DataFrame, key: str | None) -> pl.DataFrame:
    """``new`` after ``old``'s rows; with ``key``, a row of ``new`` replaces ``old``'s row of the same key."""
    if old is None or old.height == 0:
        return new
    if key is not None:
        old = old.filter(~pl.col(key).is_in(new[key].to_list()))
    return pl.concat([old, new], how="vertical")


def hand_over(data_dir: str | Path = "data", to: str | Path | None = None, *,
              rl_candidates: str | Path | None = None) -> dict[str, Any]:
    """Hand a finished round (``data_dir``: items.parquet, pairs.parquet, preferences.parquet, scorers/,
    and ``rl_candidates``, default ``data_dir/rl/candidates``, when it exists) to the next one in ``to``
    (default ``data_dir/previous_round``). Earlier rounds' pairs, answers, items and renders there are kept;
    the scorers and candidates are replaced. Returns this round's entry of ``rounds.json``."""
    data = Path(data_dir)
    prev = Path(to) if to is not None else data / "previous_round"
    need = {"items": data / "items.parquet", "pairs": data / "pairs.parquet",
            "preferences": data / "preferences.parquet", "scorers": data / "scorers" / "config.json"}
    missing = [str(p) for p in need.values() if not p.is_file()]
    if missing:
        raise HandOverError(f"{data}: not a finished round, missing {missing} (run `dvc repro` first)")
    try:
        items, pairs, prefs = read_items(need["items"]), read_pairs(need["pairs"]), read_preferences(need["preferences"])
    except (TableError, OSError) as exc:
        raise HandOverError(str(exc)) from None
    prefs = prefs.filter(pl.col("pair_id").is_in(pairs["pair_id"].to_list()))
    paired = sorted(set(pairs["item_a"].to_list()) | set(pairs["item_b"].to_list()))
    items = items.filter(pl.col("item_id").is_in(paired))
    absent = sorted(set(paired) - set(items["item_id"].to_list()))
    if absent:
        raise HandOverError(f"{need['pairs']}: pairs name items not in {need['items']}: {absent[:10]}")
    prev.mkdir(parents=True, exist_ok=True)
    old_items = read_items(prev / "items.parquet") if (prev / "items.parquet").is_file() else None
    if old_items is not None:  # the same id for a different mesh in two rounds would mix their labels
        both = items.join(old_items.select("item_id", pl.col("mesh_sha256").alias("old_sha")), on="item_id")
        clash = both.filter(pl.col("mesh_sha256") != pl.col("old_sha"))["item_id"].to_list()
        if clash:
            raise HandOverError(f"{prev / 'items.parquet'}: item ids {clash[:10]} name other meshes in an earlier "
                                "round; give this round's candidates their own ids")
    # copy the paired items' renders (the next round re-renders data/renders)
    renders = prev / "renders"
    renders.mkdir(exist_ok=True)
    new_dirs = []
    for item_id, render_dir in items.select("item_id", "render_dir").iter_rows():
        src = Path(render_dir)
        if not src.is_absolute() and not src.is_dir():
            src = data.parent / render_dir
        if not (src / "meta.json").is_file():
            raise HandOverError(f"{need['items']}: item {item_id!r}: render folder {render_dir} has no meta.json")
        dst = renders / item_id
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        new_dirs.append(str(dst))
    items = items.with_columns(pl.Series("render_dir", new_dirs, dtype=pl.Utf8))
    old_pairs = read_pairs(prev / "pairs.parquet") if (prev / "pairs.parquet").is_file() else None
    old_prefs = read_preferences(prev / "preferences.parquet") if (prev / "preferences.parquet").is_file() else None
    write_table(_union(old_items, items, "item_id"), prev / "items.parquet", "items")
    write_table(_union(old_pairs, pairs, "pair_id"), prev / "pairs.parquet", "pairs")
    write_table(_union(old_prefs, prefs, None).unique(maintain_order=True), prev / "preferences.parquet",
                "preferences")  # unique: handing the same round over twice adds nothing
    for name, src in (("scorers", data / "scorers"),
                      ("candidates", Path(rl_candidates) if rl_candidates else data / "rl" / "candidates")):
        dst = prev / name
        if name == "candidates" and not (src / "candidates.csv").is_file():
            continue
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    rounds = _read_rounds(prev)
    entry = {"round": len(rounds) + 1, "from": str(data), "pairs": pairs.height, "preferences": prefs.height,
             "items": items.height, "candidates": (prev / "candidates" / "candidates.csv").is_file(),
             "total_pairs": len(set(pl.read_parquet(prev / "pairs.parquet")["pair_id"].to_list()))}
    (prev / ROUNDS_FILE).write_text(json.dumps(rounds + [entry], indent=2) + "\n")
    return entry


def with_previous_rounds(items: pl.DataFrame, pairs: pl.DataFrame, prefs: pl.DataFrame,
                         previous: str | Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """The current round's tables joined with the earlier rounds' labelled data in ``previous`` (as
    :func:`hand_over` wrote it; unchanged when it holds none). The current round's rows win where an item
    or pair id is in both; answers of a pair from several rounds are all kept (several annotators).
    -> (items, pairs, preferences, {"previous_pairs": n, "previous_preferences": m})."""
    prev = Path(previous)
    files = [prev / f for f in ("items.parquet", "pairs.parquet", "preferences.parquet")]
    if not all(f.is_file() for f in files):
        return items, pairs, prefs, {"previous_pairs": 0, "previous_preferences": 0}
    p_items, p_pairs, p_prefs = read_items(files[0]), read_pairs(files[1]), read_preferences(files[2])
    p_prefs = p_prefs.filter(pl.col("pair_id").is_in(p_pairs["pair_id"].to_list()))
    stats = {"previous_pairs": p_pairs.filter(~pl.col("pair_id").is_in(pairs["pair_id"].to_list())).height,
             "previous_preferences": p_prefs.height}
    return (conform(_union(p_items, items, "item_id"), "items"), conform(_union(p_pairs, pairs, "pair_id"), "pairs"),
            conform(_union(p_prefs, prefs, None).unique(maintain_order=True), "preferences"), stats)


def write_with_previous_rounds(items: str | Path, pairs: str | Path, preferences: str | Path, previous: str | Path,
                               folder: str | Path) -> tuple[dict[str, Path], dict[str, int]]:
    """:func:`with_previous_rounds` on the tables at these paths, written under ``folder`` as
    ``items.parquet``, ``pairs.parquet`` and ``preferences.parquet``: -> (their paths, the stats)."""
    try:
        tables = with_previous_rounds(read_items(items), read_pairs(pairs), read_preferences(preferences), previous)
    except TableError as exc:
        raise TableError(f"the earlier rounds in {previous}: {exc}") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {name: folder / f"{name}.parquet" for name in ("items", "pairs", "preferences")}
    for (name, path), table in zip(out.items(), tables[:3]):
        write_table(table, path, name)
    return out, tables[3]


__all__ = ["HandOverError", "ROUNDS_FILE", "hand_over", "with_previous_rounds", "write_with_previous_rounds"]
