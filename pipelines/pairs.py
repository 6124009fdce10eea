"""Stage ``pairs``: comparison pairs within each prompt of ``pairs.splits`` (held-out prompts get none).

``strategy: active`` (round r+1 of the loop, docs/active-learning.md): the ``pairs.active.k`` pairs of all
within-prompt pairs where round r's scorers (``pairs.active.previous``/scorers) are least sure
(:mod:`rewardkit.data.active`), never one of round r's labelled pairs (``previous``/pairs.parquet, whose
``previous``/preferences.parquet answers calibrate the temperature). ``data/selected_pairs.parquet`` holds
the pairs new in this run: what ``rewardkit annotate push --pairs`` sends to Label Studio.
"""

from __future__ import annotations

import polars as pl

from pathlib import Path

from pipelines._common import CANDIDATES, ITEMS, PAIRS, PROBES, chdir_root, params, step

SELECTED = Path("data/selected_pairs.parquet")


def main() -> None:
    chdir_root()
    p = params("pairs")
    from rewardkit.data.candidates import read_candidates
    from rewardkit.data.pairs import sample_pairs
    from rewardkit.data.tables import read_items, write_table
    from rewardkit.demo import probe_pairs

    items = read_items(ITEMS)
    cands = read_candidates(CANDIDATES)
    keep = cands.filter(pl.col("split").is_in(list(p["splits"])))["item_id"]
    items = items.filter(pl.col("item_id").is_in(keep.implode()))
    if items.height == 0:
        raise SystemExit(f"pairs: no candidates in splits {list(p['splits'])} (see {CANDIDATES})")
    with step("pairs"):
        if p["strategy"] == "active":
            pairs = _active(p.get("active") or {}, items)
        else:
            k = p.get("k")
            pairs = sample_pairs(items, p["strategy"], k=int(k) if k is not None else None, seed=int(p["seed"]))
        write_table(pairs, PAIRS, "pairs")
        write_table(pairs, SELECTED, "pairs")
        # disentanglement probes: pairs known to differ in texture only / geometry only (none where the
        # candidates' degradations are not recorded)
        probes = probe_pairs(pairs, cands)
        probes.write_parquet(PROBES)
        print(f"  {pairs.height} pairs over {pairs['prompt_id'].n_unique()} prompts ({p['strategy']})")


def _active(a: dict, items: pl.DataFrame) -> pl.DataFrame:
    from rewardkit.config import ConfigError, from_dict
    from rewardkit.data.active import ActiveConfig
    from rewardkit.train.active import select_next_pairs

    prev = Path(a.get("previous") or "data/previous_round")
    if not (prev / "scorers" / "config.json").is_file():
        raise SystemExit(f"pairs: strategy active needs round r's scorers in {prev}/scorers (see docs/active-learning.md)")
    try:
        cfg = from_dict(ActiveConfig, {k: v for k, v in a.items() if k not in ("previous", "stage")}, key="pairs.active")
    except ConfigError as exc:
        raise SystemExit(f"pairs: params.yaml {exc}") from None
    lab = prev / "pairs.parquet"
    prefs = prev / "preferences.parquet"
    selected, summary = select_next_pairs(prev / "scorers", a.get("stage", "global"), items, cfg,
                                          labelled_pairs=lab if lab.is_file() else None,
                                          preferences=prefs if prefs.is_file() and lab.is_file() else None,
                                          render_root=ITEMS.parent)
    print(f"  active: {summary}")
    return selected.select("pair_id", "prompt_id", "item_a", "item_b")


if __name__ == "__main__":
    main()
