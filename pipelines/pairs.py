"""Stage ``pairs``: comparison pairs within each prompt of ``pairs.splits`` (held-out prompts get none)."""

from __future__ import annotations

import polars as pl

from pipelines._common import CANDIDATES, ITEMS, PAIRS, PROBES, chdir_root, params, step


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
        k = p.get("k")
        pairs = sample_pairs(items, p["strategy"], k=int(k) if k is not None else None, seed=int(p["seed"]))
        write_table(pairs, PAIRS, "pairs")
        # disentanglement probes: pairs known to differ in texture only / geometry only (none where the
        # candidates' degradations are not recorded)
        probes = probe_pairs(pairs, cands)
        probes.write_parquet(PROBES)
        print(f"  {pairs.height} pairs over {pairs['prompt_id'].n_unique()} prompts ({p['strategy']})")


if __name__ == "__main__":
    main()
