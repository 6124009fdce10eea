"""Does a round of the loop make the scorers agree with the anchors on the policy's samples? (issue 18)

Run from a repository after a second round of the loop (docs/active-learning.md), e.g.::

    PYOPENGL_PLATFORM=egl python benchmarks/bench_loop_round.py --samples data/rl/candidates \\
        --before data/previous_round/scorers --after data/scorers

``--samples``: a policy-samples folder (``candidates.csv`` + meshes, rewardkit.rl.candidates); use one that
no round was trained on (the RL run after the latest export writes one). Every within-prompt pair of its
meshes of one kind (``--mesh coarse|refined``) that the anchor rules decide (rewardkit.rl.annotator: shape
anchor for global, detail anchors for local; ties left out) is a test pair; the figure is, per stage, how
often each scorer set orders the pair as the anchors do, and the mean within-prompt Spearman correlation of
its scores with the anchor. With ``--heldout-data DIR`` (a round-1 demo run's ``data`` folder: items.parquet
with its renders, candidates/candidates.parquet) it also reports both scorer sets' held-out clean-vs-degraded
accuracy on the demo's held-out prompts (rewardkit.eval.heldout, as the evaluate stage), to see what a round
on the policy's samples costs on the demo's own data. Prints JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewardkit.data.candidates import read_generations  # noqa: E402
from rewardkit.rl.annotator import AnchorRules, anchor_label, anchor_values  # noqa: E402
from rewardkit.scoring import load_scorer, score_meshes  # noqa: E402


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", default="data/rl/candidates")
    ap.add_argument("--before", default="data/previous_round/scorers", help="round r's scorer set")
    ap.add_argument("--after", default="data/scorers", help="round r+1's scorer set")
    ap.add_argument("--mesh", default="coarse", choices=["coarse", "refined"])
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--heldout-data", default=None, help="a round-1 demo run's data folder (held-out prompts)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    items, _ = read_generations(args.samples)
    kinds = pl.read_csv(Path(args.samples) / "candidates.csv", infer_schema_length=0).select("item_id", "mesh")
    items = items.join(kinds, on="item_id").filter(pl.col("mesh") == args.mesh)
    anchors = anchor_values(items, AnchorRules(margin=args.margin))
    rows = items.select("item_id", "prompt", "mesh_path").to_dicts()
    scores = {}
    for name, folder in (("before", args.before), ("after", args.after)):
        scorer = load_scorer(folder, device="cpu")
        out = score_meshes([r["mesh_path"] for r in rows], [r["prompt"] for r in rows], scorer, on_error="raise")
        scores[name] = {r["item_id"]: s.scores for r, s in zip(rows, out)}
    result: dict = {"samples": args.samples, "mesh": args.mesh, "items": len(rows), "margin": args.margin}
    for stage in ("global", "local"):
        stage_res = {}
        by_prompt: dict[str, list[str]] = {}
        for r in rows:
            by_prompt.setdefault(r["prompt"], []).append(r["item_id"])
        decided = [(a, b, anchor_label(anchors[a][stage], anchors[b][stage], args.margin))
                   for ids in by_prompt.values() for a, b in itertools.combinations(ids, 2)]
        decided = [(a, b, lab) for a, b, lab in decided if lab != "tie"]
        for name in ("before", "after"):
            s = scores[name]
            agree = [(s[a][stage] > s[b][stage]) == (lab == "a") for a, b, lab in decided if s[a][stage] != s[b][stage]]
            rhos = [_spearman(np.array([s[i][stage] for i in ids]), np.array([anchors[i][stage] for i in ids]))
                    for ids in by_prompt.values()]
            rhos = [r for r in rhos if r is not None]
            stage_res[name] = {"pair_agreement": round(float(np.mean(agree)), 4) if agree else None,
                               "pairs": len(agree),
                               "mean_spearman": round(float(np.mean(rhos)), 4) if rhos else None,
                               "prompts": len(rhos)}
        result[stage] = stage_res
    if args.heldout_data:
        from rewardkit.data.tables import read_items
        from rewardkit.eval.heldout import evaluate_heldout

        data = Path(args.heldout_data)
        cands = pl.read_parquet(data / "candidates" / "candidates.parquet")
        hold = read_items(data / "items.parquet").join(cands.drop("prompt_id"), on="item_id")
        hold = hold.filter(pl.col("split") == "holdout").with_columns(
            pl.col("render_dir").map_elements(lambda d: str(data.parent / d), return_dtype=pl.Utf8))
        result["heldout"] = {"prompts": hold["prompt_id"].n_unique(), "candidates": hold.height}
        for name, folder in (("before", args.before), ("after", args.after)):
            report, _, _ = evaluate_heldout(load_scorer(folder, device="cpu"), hold)
            result["heldout"][name] = {stage: {k: report[stage].get(k) for k in
                                               ("holdout_owned_accuracy", "holdout_other_accuracy", "holdout_pairs")}
                                       for stage in ("global", "local")}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
