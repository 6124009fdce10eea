"""Label efficiency of active pair selection on the demo (issue 18, item 4).

Run from a repository where `dvc repro` has produced the demo data (``data/items.parquet``,
``data/candidates/``, ``data/renders/``, ``data/models/<stage>/model``)::

    PYOPENGL_PLATFORM=egl python benchmarks/bench_label_efficiency.py --stage global \\
        --csv reports/label_efficiency.csv --plot docs/figures/label_efficiency.png

The oracle is the demo's stand-in annotator (:mod:`rewardkit.demo.annotator`, 5 % label noise as in the
demo's labels): any pair it is asked about gets the answer the rule gives. The pool is every within-prompt
pair of the demo's training prompts (48 x 66 = 3168 pairs); the test set every decided pair of the
held-out prompts, labelled by the rule without noise.

Per seed and strategy: ``--start`` random labels, then rounds of ``--k`` labels up to ``--max-labels``;
each round retrains an ensemble of ``--members`` reward heads (bootstrap resamples, own seeds) **from a
fresh initialisation, quality head only (no prompt-alignment term)** on the frozen view features of the
trained demo model's image tower (:func:`rewardkit.train.ensemble.fit_heads`: seconds per round), and
measures the ensemble mean's held-out pairwise accuracy. ``active`` picks the next K with
:func:`rewardkit.data.active.select_pairs` (calibrated BT uncertainty, ensemble disagreement, 20 %
random); ``random`` draws K uniformly from the unlabelled pool.

``--tower`` picks the frozen image tower whose view features the heads read:

- ``pretrained`` (the fair test): a fresh ``rk-effnet-lite0`` with the ImageNet trunk of the
  ``efficientnet-lite0`` wheel and a seeded random projection; it has seen none of the demo's labels, so
  every label the heads learn from is one the strategy chose.
- ``trained``: the demo model's own tower (``data/models/<stage>/model``). It was trained on the demo's
  labelled training pairs; both strategies share it, so the comparison between them is fair, but its
  features already encode what those labels taught, and a head on them learns the direction from a few
  dozen labels whichever pairs they are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewardkit.data.active import (  # noqa: E402
    ActiveConfig,
    all_pool_pairs,
    fit_temperature,
    indistinguishable,
    pair_predictions,
    select_pairs,
)
from rewardkit.data.candidates import read_candidates  # noqa: E402
from rewardkit.data.tables import read_items  # noqa: E402
from rewardkit.demo.annotator import label_pairs  # noqa: E402
from rewardkit.models import StageRewardModel  # noqa: E402
from rewardkit.models.losses import LABEL_TARGETS  # noqa: E402
from rewardkit.train.data import ViewCache, resolve_render_dir  # noqa: E402
from rewardkit.train.ensemble import EnsembleConfig, HeadFeatures, fit_heads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data", help="the pipeline's data folder")
    ap.add_argument("--stage", default="global", choices=["global", "local"])
    ap.add_argument("--start", type=int, default=20)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--max-labels", type=int, default=200)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--csv", default="reports/label_efficiency.csv")
    ap.add_argument("--plot", default="docs/figures/label_efficiency.png")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tower", default="pretrained", choices=["pretrained", "trained"],
                    help="pretrained: ImageNet trunk + random projection, no label seen; trained: the demo model's")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    data = Path(a.data)
    items = read_items(data / "items.parquet")
    cands = read_candidates(data / "candidates" / "candidates.parquet")
    split = dict(zip(cands["item_id"], cands["split"]))
    if a.tower == "trained":
        model = StageRewardModel.from_pretrained(data / "models" / a.stage / "model")
        tc = json.loads((data / "models" / a.stage / "train_config.json").read_text())
        size, views = int(tc.get("image_size") or model.load_size), tc.get("views")
    else:
        torch.manual_seed(0)  # the random projection of the trunk's pooled features
        model = StageRewardModel({"stage": a.stage, "use_alignment": False,
                                  "backbone": {"name": "rk-effnet-lite0", "pretrained": "efficientnet-lite0"}})
        size, views = model.load_size, None
    feats = HeadFeatures(model, ViewCache(model.modes, size, views))
    dir_of = {i: str(resolve_render_dir(d, None, data / "items.parquet")) for i, d in zip(items["item_id"], items["render_dir"])}
    prompt_of = dict(zip(items["item_id"], items["prompt"]))
    feats.add_dirs(list(dir_of.values()))
    feats.add_prompts(list(set(prompt_of.values())))
    t_feat = time.perf_counter() - t0
    train_items = items.filter(pl.col("item_id").map_elements(lambda x: split.get(x) == "train", return_dtype=pl.Boolean))
    test_items = items.filter(pl.col("item_id").map_elements(lambda x: split.get(x) == "holdout", return_dtype=pl.Boolean))
    pool = all_pool_pairs(train_items)
    test = all_pool_pairs(test_items)
    test_lab = label_pairs(test, cands, noise=0.0, questions=(a.stage,)).filter(pl.col("label").is_in(["a", "b"]))
    test = test.join(test_lab.select("pair_id", "label"), on="pair_id")
    test_t = torch.tensor([LABEL_TARGETS[x] for x in test["label"]])
    pool_index = {x: i for i, x in enumerate(train_items["item_id"])}
    print(f"pool {pool.height} pairs ({train_items.height} candidates), test {test.height} decided pairs; "
          f"features in {t_feat:.1f} s", flush=True)

    def examples(pairs: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
        j = pairs.join(labels.select("pair_id", "label"), on="pair_id").filter(pl.col("label").is_in(["a", "b", "tie"]))
        return pl.DataFrame({"dir_a": [dir_of[x] for x in j["item_a"]], "dir_b": [dir_of[x] for x in j["item_b"]],
                             "prompt": [prompt_of[x] for x in j["item_a"]],
                             "target": [LABEL_TARGETS[x] for x in j["label"]]})

    @torch.no_grad()
    def rewards(heads, ids) -> np.ndarray:
        d, p = [dir_of[x] for x in ids], [prompt_of[x] for x in ids]
        img, _ = feats.batch(d, p)
        mask = torch.ones(img.shape[:2], dtype=torch.bool)
        from rewardkit.models.ensemble import head_reward

        return np.stack([head_reward(h.fusion, h.quality, h.logit_scale, img, feats.mode_index, feats.view_index,
                                     mask, None).numpy() for h in heads])

    def accuracy(heads) -> float:
        ra = rewards(heads, test["item_a"].to_list()).mean(0)
        rb = rewards(heads, test["item_b"].to_list()).mean(0)
        return float(((torch.from_numpy(ra) > torch.from_numpy(rb)).float() == test_t).float().mean())

    rows = []
    for seed in a.seeds:
        rng = np.random.default_rng(1000 + seed)
        start = pool[rng.choice(pool.height, a.start, replace=False).tolist()]
        for strategy in ("random", "active"):
            t_s = time.perf_counter()
            labelled = start
            labels = label_pairs(labelled, cands, noise=a.noise, seed=seed, questions=(a.stage,))
            srng = np.random.default_rng(2000 + seed)
            rnd = 0
            while True:
                ex = examples(labelled, labels)
                cfg = EnsembleConfig(members=a.members + 1, seed=100 * seed + rnd, epochs=a.epochs, lr=3e-3)
                heads = fit_heads(model, feats, ex, cfg, n_heads=a.members, fresh=True, alignment=False)
                acc = accuracy(heads)
                rows.append({"strategy": strategy, "seed": seed, "round": rnd, "labels": labelled.height,
                             "test_accuracy": acc})
                print(f"  seed {seed} {strategy:6s} labels {labelled.height:4d}  held-out accuracy {acc:.3f}", flush=True)
                if labelled.height >= a.max_labels:
                    break
                if strategy == "random":
                    free = pool.filter(~pl.col("pair_id").is_in(labelled["pair_id"].to_list()))
                    new = free[srng.choice(free.height, a.k, replace=False).tolist()]
                else:
                    r = rewards(heads, train_items["item_id"].to_list())
                    lab = labelled.join(labels.select("pair_id", "label"), on="pair_id").filter(
                        pl.col("label").is_in(["a", "b", "tie"]))
                    m = r.mean(0)
                    temp = fit_temperature([m[pool_index[x]] - m[pool_index[y]] for x, y in zip(lab["item_a"], lab["item_b"])],
                                           [LABEL_TARGETS[x] for x in lab["label"]])
                    p, dis = pair_predictions(pool, r, pool_index, temp)
                    sel = select_pairs(pool, p, dis, ActiveConfig(k=a.k, seed=100 * seed + rnd, per_prompt_cap=4),
                                       labelled=labelled, skip=indistinguishable(pool, r, pool_index))
                    new = sel.select(pool.columns)
                labels = pl.concat([labels, label_pairs(new, cands, noise=a.noise, seed=10_000 * seed + rnd + 1,
                                                        questions=(a.stage,))])
                labelled = pl.concat([labelled, new])
                rnd += 1
            print(f"  seed {seed} {strategy}: {time.perf_counter() - t_s:.1f} s", flush=True)
    df = pl.DataFrame(rows)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(a.csv)
    curve = df.group_by("strategy", "labels").agg(pl.col("test_accuracy").mean().alias("mean"),
                                                  pl.col("test_accuracy").min().alias("lo"),
                                                  pl.col("test_accuracy").max().alias("hi")).sort("strategy", "labels")
    rand = curve.filter(pl.col("strategy") == "random")
    act = curve.filter(pl.col("strategy") == "active")
    target = float(rand.filter(pl.col("labels") == rand["labels"].max())["mean"][0])
    # the first label count from which active's mean accuracy stays at or above random's final one (a single
    # lucky round on a noisy curve does not count)
    needed = None
    for n, m in zip(act["labels"].to_list()[::-1], act["mean"].to_list()[::-1]):
        if m < target - 1e-9:
            break
        needed = int(n)
    summary = {"stage": a.stage, "tower": a.tower, "random_final_labels": int(rand["labels"].max()), "random_final_accuracy": target,
               "random_best_accuracy": float(rand["mean"].max()), "active_best_accuracy": float(act["mean"].max()),
               "active_final_accuracy": float(act.filter(pl.col("labels") == act["labels"].max())["mean"][0]),
               "active_labels_to_reach_and_keep_random_final": needed,
               "goal_met (<= half)": needed is not None and needed <= int(rand["labels"].max()) // 2,
               "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary, indent=2))
    Path(a.csv).with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c, col in (("random", rand, "tab:gray"), ("active", act, "tab:blue")):
        ax.plot(c["labels"], c["mean"], marker="o", color=col, label=f"{name} (mean of {len(a.seeds)} seeds)")
        ax.fill_between(c["labels"].to_numpy(), c["lo"].to_numpy(), c["hi"].to_numpy(), color=col, alpha=0.2)
    ax.axhline(target, color="tab:gray", ls=":", lw=1, label=f"random's final accuracy ({target:.3f})")
    ax.set_xlabel("labelled pairs")
    ax.set_ylabel(f"held-out pairwise accuracy ({a.stage})")
    ax.set_title(f"Label efficiency, {a.stage} stage ({a.tower} tower): active vs random", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.plot, dpi=120)
    print(f"-> {a.csv}, {a.plot}")


if __name__ == "__main__":
    main()
