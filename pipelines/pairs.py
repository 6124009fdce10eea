"""Stage ``pairs``: comparison pairs within each training prompt (held-out prompts get none)."""

from __future__ import annotations

import polars as pl

from pipelines._common import DEMO_DIR, ITEMS, PAIRS, PROBES, chdir_root, params, step


def main() -> None:
    chdir_root()
    p = params("pairs")
    from rewardkit.data.pairs import sample_pairs
    from rewardkit.data.tables import read_items, write_table

    from rewardkit.demo import probe_pairs, read_candidates

    items = read_items(ITEMS)
    cands_path = DEMO_DIR / "candidates.parquet"
    cands = read_candidates(cands_path) if cands_path.exists() else None
    if cands is not None:
        keep = cands.filter(pl.col("split").is_in(list(p["splits"])))["item_id"]
        items = items.filter(pl.col("item_id").is_in(keep.implode()))
    with step("pairs"):
        k = p.get("k")
        pairs = sample_pairs(items, p["strategy"], k=int(k) if k is not None else None, seed=int(p["seed"]))
        write_table(pairs, PAIRS, "pairs")
        # disentanglement probes (pairs differing in texture only / geometry only), known for the demo
        probes = probe_pairs(pairs, cands) if cands is not None else pl.DataFrame(
            schema={"pair_id": pl.Utf8, "differs_in": pl.Utf8})
        probes.write_parquet(PROBES)
        print(f"  {pairs.height} pairs over {pairs['prompt_id'].n_unique()} prompts ({p['strategy']})")


if __name__ == "__main__":
    main()
