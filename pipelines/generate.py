"""Stage ``generate``: the candidates to compare, from the ``generate`` params.

``generate.source: demo`` builds the procedural demo (``rewardkit.demo``: prompted objects, a clean
candidate and controlled degradations per prompt, as GLB under ``data/candidates/meshes/``).
``generate.source: own`` reads a lab's own generations instead: the folder ``generate.own.dir`` with
a ``candidates.csv`` (``mesh_path``, ``prompt``, optional ``split``, ...; ``rewardkit.data.candidates``)
and the meshes it names. dvc.yaml lists that folder as a dependency, so new or changed generations
re-run the pipeline from here. Both write ``data/candidates/items.parquet`` and ``candidates.parquet``.
"""

from __future__ import annotations

import polars as pl

from pipelines._common import CANDIDATES, CANDIDATES_DIR, GENERATED_ITEMS, chdir_root, params, step

SOURCES = ("demo", "own")


def demo(p: dict) -> pl.DataFrame:
    """The demo's candidates table (written under data/candidates/ with the items and meshes)."""
    from rewardkit.config import ConfigError, from_dict
    from rewardkit.demo import DemoConfig, generate

    d = {k: v for k, v in p.items() if k not in ("source", "own", "factorial", "real")}
    d.update({f"factorial_{kind}": n for kind, n in (p.get("factorial") or {}).items()})
    if (p.get("real") or {}).get("sources"):  # no sources: no real meshes at all
        d["real"] = p["real"]
    try:
        cfg = from_dict(DemoConfig, d, key="generate")
    except ConfigError as exc:
        raise SystemExit(f"generate: params.yaml {exc}") from None
    return generate(cfg, CANDIDATES_DIR)[1]


def own(p: dict) -> pl.DataFrame:
    """The candidates table of the lab's generations in generate.own.dir (written with the items)."""
    from rewardkit.data.candidates import read_generations
    from rewardkit.data.tables import write_table

    o = p.get("own") or {}
    if not o.get("dir"):
        raise SystemExit("params.yaml: generate.source is 'own' but generate.own.dir is not set")
    try:
        items, cands = read_generations(o["dir"], **{k: o[k] for k in ("holdout_fraction", "seed") if k in o})
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"generate: {exc}") from None
    CANDIDATES_DIR.mkdir(parents=True, exist_ok=True)
    write_table(items, GENERATED_ITEMS, "items")
    cands.write_parquet(CANDIDATES)
    return cands


def main() -> None:
    chdir_root()
    p = params("generate")
    source = p.get("source", "demo")
    if source not in SOURCES:
        raise SystemExit(f"params.yaml: generate.source must be one of {SOURCES}, not {source!r}")
    with step(f"generate ({source})"):
        cands = (demo if source == "demo" else own)(p)
        held = cands.filter(pl.col("split") == "holdout")["prompt_id"].n_unique()
        print(f"  {cands.height} candidates, {cands['prompt_id'].n_unique()} prompts ({held} held out) "
              f"in {CANDIDATES_DIR}")


if __name__ == "__main__":
    main()
