"""Reward-model recipes side by side on the demo's held-out prompts AND the real-mesh validation set (issue 28).

    dvc repro label                                     # the data once (generate, render, pairs, label)
    python benchmarks/bench_recipes.py [--only NAME ...] [--out out/recipes] [--smoke]

Each recipe is params.yaml with a few dotted overrides (``RECIPES`` below) and, optionally, a data filter
(``demo``: the demo's procedural prompts only, without the real meshes of ``generate.real``). For each, in
this process and in this checkout, the pipeline's own stage code runs on the data that ``dvc repro label``
made: ``train_global``, ``train_local``, ``export`` and ``evaluate`` (so ``data/models``, ``data/scorers``
and ``reports/`` are overwritten: run ``dvc repro`` afterwards to restore the committed recipe's outputs).
Printed per recipe: the demo's held-out own-stage accuracy per stage and the real-mesh transfer figures
(``metrics.json``'s ``transfer``: the original against 1 % and 3 % vertex noise, texture grey and hue +120°,
and global's largest change under texture-only changes); each recipe's metrics.json is kept under ``--out``.
Frozen-trunk recipes train on cached features, so a recipe costs about a minute per stage on a 2-core CPU.
``--smoke`` runs the first recipe for one epoch, without the ensemble (the suite's check that this runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (dotted params overrides, data filter: "all" | "demo")
RECIPES: dict[str, tuple[dict, str]] = {
    "demo data only (the issue-17 recipe)": ({}, "demo"),
    "real meshes in training": ({}, "all"),
    "+ no text for both stages": ({"train.global.model.use_alignment": False,
                                   "train.local.model.use_alignment": False}, "all"),
    # not measured yet (docs/reward-models.md): the ensemble's share, without the text term for global only
    "+ global without text (quality head only)": ({"train.global.model.use_alignment": False}, "all"),
    "+ no ensemble (1 member)": ({"export.ensemble.members": 1}, "all"),
    # the random-init towers of before issue 17 (990492f: rk-tiny-rn, 64 px, lr 5e-4) for global only, on the new
    # data; no feature cache (the tower trains): ~1.7 s a step on the shared 2-core CPU, so 4 epochs, not 990492f's 8
    "+ no ensemble, global random-init rk-tiny-rn (990492f towers, 4 epochs)": ({
        "export.ensemble.members": 1,
        "train.global.model.backbone": {"name": "rk-tiny-rn", "pretrained": None},
        "train.global.model.unlocked_image_blocks": None, "train.global.model.train_image_head": False,
        "train.global.feature_cache": False, "train.global.lr": 0.0005, "train.global.max_epochs": 4}, "all"),
    "+ no ensemble, quality head with a hidden layer (64)": ({
        "export.ensemble.members": 1, "train.common.model.quality_hidden": 64}, "all"),
    "+ no ensemble, global 12 epochs": ({"export.ensemble.members": 1, "train.global.max_epochs": 12}, "all"),
}


def set_dotted(d: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for k in path:
        d = d.setdefault(k, {})
    d[last] = value


def demo_only(folder: Path) -> dict[str, Path]:
    """The pipeline's pairs / preferences / probes without the real meshes' prompts, written under ``folder``."""
    import polars as pl

    from pipelines._common import CANDIDATES, PAIRS, PREFERENCES, PROBES

    from rewardkit.demo import CATEGORIES

    cands = pl.read_parquet(CANDIDATES)
    real = set(cands.filter(~pl.col("category").is_in(list(CATEGORIES)))["item_id"].to_list())
    pairs = pl.read_parquet(PAIRS)
    keep = pairs.filter(~pl.col("item_a").is_in(list(real)) & ~pl.col("item_b").is_in(list(real)))
    ids = keep["pair_id"].to_list()
    out = {"PAIRS": folder / "pairs.parquet", "PREFERENCES": folder / "preferences.parquet",
           "PROBES": folder / "probes.parquet"}
    keep.write_parquet(out["PAIRS"])
    pl.read_parquet(PREFERENCES).filter(pl.col("pair_id").is_in(ids)).write_parquet(out["PREFERENCES"])
    pl.read_parquet(PROBES).filter(pl.col("pair_id").is_in(ids)).write_parquet(out["PROBES"])
    print(f"  demo data only: {keep.height} of {pairs.height} pairs", flush=True)
    return out


def run_recipe(name: str, overrides: dict, data: str, out: Path, smoke: bool) -> dict:
    import pipelines._common as common
    import pipelines.evaluate as evaluate
    import pipelines.export as export
    import pipelines.train as train

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for k, v in overrides.items():
        set_dotted(p, k, v)
    if smoke:
        set_dotted(p, "train.common.max_epochs", 1)
        set_dotted(p, "export.ensemble.members", 1)
        if (p.get("evaluate") or {}).get("transfer"):  # params without a transfer report keep none
            set_dotted(p, "evaluate.transfer.noise", [0.03])
    with tempfile.TemporaryDirectory(prefix="rewardkit-recipe-") as tmp:
        tmp = Path(tmp)
        (tmp / "params.yaml").write_text(yaml.safe_dump(p))
        saved = {k: getattr(train, k) for k in ("PAIRS", "PREFERENCES", "PROBES")}
        common.PARAMS_FILE = tmp / "params.yaml"
        try:
            if data == "demo":
                for k, v in demo_only(tmp).items():
                    setattr(train, k, v)
            t0 = time.perf_counter()
            for stage in ("global", "local"):
                sys.argv = ["train", stage]
                train.main()
            export.main()
            evaluate.main()
            seconds = time.perf_counter() - t0
        finally:
            for k, v in saved.items():
                setattr(train, k, v)
            common.PARAMS_FILE = ROOT / "params.yaml"
    report = json.loads((ROOT / "reports" / "metrics.json").read_text())
    report["recipe"] = {"name": name, "overrides": overrides, "data": data, "seconds": round(seconds, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / (name.replace(" ", "_").replace("/", "-") + ".json")).write_text(json.dumps(report, indent=2))
    return report


def row(report: dict) -> str:
    t = report.get("transfer") or {}
    cells = [report["recipe"]["name"]]
    for stage in ("global", "local"):
        cells.append(f"{report[stage]['holdout_owned_accuracy']}")
    for stage in ("global", "local"):
        per = (t.get(stage) or {}).get("per_degradation") or {}
        cells.append(" / ".join(f"{v['original_wins']}" for v in per.values()) or "-")
    cells.append(str((t.get("global") or {}).get("max_abs_shift_under_texture_changes")))
    cells.append(f"{report['recipe']['seconds']:.0f}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", help="recipe names (substrings) to run")
    ap.add_argument("--out", default="out/recipes")
    ap.add_argument("--smoke", action="store_true", help="the first recipe, 1 epoch, no ensemble")
    args = ap.parse_args()
    from pipelines._common import chdir_root

    chdir_root()
    names = [n for n in RECIPES if not args.only or any(o in n for o in args.only)]
    if args.smoke:
        names = names[:1]
    reports = []
    for n in names:
        print(f"\n=== recipe: {n}", flush=True)
        reports.append(run_recipe(n, *RECIPES[n], Path(args.out), args.smoke))
        print(row(reports[-1]), flush=True)
    print("\n| recipe | demo held-out own: global | local | real meshes, global: original beats "
          "noise 1 % / 3 % / grey / hue | local: noise 1 % / 3 % / grey / hue | global max shift (texture) | s |")
    for r in reports:
        print(row(r))


if __name__ == "__main__":
    main()
