"""Preference data for training: the items, pairs and preferences tables joined, split by prompt, and the
render folders read into view tensors.

One example is one preference row (one annotator's answer to one pair for the stage's question) unless
``aggregate_annotators`` averages the answers to a pair into one soft target. ``both_bad`` rows stay in
the tables and are counted in the data summary but carry no ordering, so they are not examples for the
Bradley–Terry loss. Each example carries the weight 1/(examples of its prompt in its split).

The split is by prompt: every prompt's pairs are all in train, all in validation or all in test, so no
prompt is seen in training and scored in validation. It depends only on the set of prompt ids and the seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rewardkit.data.tables import TableError, read_items, read_pairs, read_preferences
from rewardkit.models.losses import LABEL_TARGETS
from rewardkit.train.augment import Augment
from rewardkit.train.features import TowerFeatures
from rewardkit.train.views import ViewCache

SPLITS = ("train", "val", "test")
PROBE_KINDS = ("texture", "geometry")


# ------------------------------------------------------------------------------------------------- #
# split
def split_prompts(prompt_ids: Sequence[str], val_fraction: float, test_fraction: float = 0.0,
                  seed: int = 0) -> dict[str, str]:
    """prompt_id -> "train" | "val" | "test". Seeded; depends only on the set of ids, not their order."""
    ids = sorted(set(prompt_ids))
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    n_test = int(round(test_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    if test_fraction > 0 and n >= 3:
        n_test = max(1, n_test)
    n_val = min(n_val, max(0, n - 1))
    n_test = min(n_test, max(0, n - 1 - n_val))
    out = {}
    for rank, i in enumerate(order):
        out[ids[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return out


# ------------------------------------------------------------------------------------------------- #
# tables -> examples
def resolve_render_dir(render_dir: str, render_root: str | Path | None, items_path: str | Path | None) -> Path:
    p = Path(render_dir).expanduser()
    if p.is_absolute():
        return p
    candidates = []
    if render_root is not None:
        candidates.append(Path(render_root) / p)
    if items_path is not None:
        candidates.append(Path(items_path).parent / p)
    candidates.append(Path.cwd() / p)
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def _frame(x: pl.DataFrame | str | Path, reader) -> tuple[pl.DataFrame, Path | None]:
    if isinstance(x, pl.DataFrame):
        return x, None
    return reader(x), Path(x)


def build_examples(
    items: pl.DataFrame | str | Path,
    pairs: pl.DataFrame | str | Path,
    preferences: pl.DataFrame | str | Path,
    question: str,
    *,
    render_root: str | Path | None = None,
    aggregate_annotators: bool = False,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Join the three tables into one row per example for ``question``.

    Returns (examples, summary). Columns: pair_id, prompt_id, prompt, item_a, item_b, dir_a, dir_b,
    label, target. ``summary`` counts rows per label (``both_bad`` included) and what was dropped.
    """
    items_df, items_path = _frame(items, read_items)
    pairs_df, _ = _frame(pairs, read_pairs)
    prefs_df, _ = _frame(preferences, read_preferences)
    prefs = prefs_df.filter(pl.col("question") == question)
    label_counts = {k: int(v) for k, v in prefs.group_by("label").len().iter_rows()}
    unknown_pairs = prefs.join(pairs_df, on="pair_id", how="anti")
    if unknown_pairs.height:
        raise TableError(f"preferences refer to pairs not in the pairs table: {unknown_pairs['pair_id'].unique().to_list()[:10]}")
    rows = prefs.filter(pl.col("label") != "both_bad").join(pairs_df, on="pair_id", how="inner")
    it = items_df.select("item_id", "prompt", "render_dir", pl.col("prompt_id").alias("item_prompt_id"))
    rows = rows.join(it.rename({"item_id": "item_a", "prompt": "prompt", "render_dir": "dir_a",
                                "item_prompt_id": "prompt_id_a"}), on="item_a", how="left")
    rows = rows.join(it.select("item_id", "render_dir").rename({"item_id": "item_b", "render_dir": "dir_b"}),
                     on="item_b", how="left")
    missing = rows.filter(pl.col("dir_a").is_null() | pl.col("dir_b").is_null())
    if missing.height:
        raise TableError(f"pairs refer to items not in the items table: pairs {missing['pair_id'].unique().to_list()[:10]}")
    rows = rows.with_columns(pl.col("label").replace_strict(LABEL_TARGETS, return_dtype=pl.Float64).alias("target"))
    if aggregate_annotators:
        rows = rows.group_by("pair_id", maintain_order=True).agg(
            pl.col("prompt_id").first(), pl.col("prompt").first(), pl.col("item_a").first(), pl.col("item_b").first(),
            pl.col("dir_a").first(), pl.col("dir_b").first(), pl.col("target").mean(),
            pl.col("label").unique().sort().str.join("+").alias("label"), pl.len().alias("n_answers"),
        )
    rows = rows.with_columns(
        pl.col("dir_a").map_elements(lambda s: str(resolve_render_dir(s, render_root, items_path)), return_dtype=pl.Utf8),
        pl.col("dir_b").map_elements(lambda s: str(resolve_render_dir(s, render_root, items_path)), return_dtype=pl.Utf8),
    )
    examples = rows.select("pair_id", "prompt_id", "prompt", "item_a", "item_b", "dir_a", "dir_b", "label", "target")
    summary = {
        "question": question,
        "preference_rows": int(prefs.height),
        "labels": {k: label_counts.get(k, 0) for k in LABEL_TARGETS},
        "both_bad_excluded": label_counts.get("both_bad", 0),
        "examples": int(examples.height),
        "pairs": int(examples["pair_id"].n_unique()) if examples.height else 0,
        "prompts": int(examples["prompt_id"].n_unique()) if examples.height else 0,
    }
    return examples, summary


def add_prompt_weights(examples: pl.DataFrame) -> pl.DataFrame:
    """weight = 1/(examples of the same prompt in this frame)."""
    return examples.with_columns((1.0 / pl.len().over("prompt_id")).cast(pl.Float64).alias("weight"))


# ------------------------------------------------------------------------------------------------- #
def split_examples(items: pl.DataFrame | str | Path, pairs: pl.DataFrame | str | Path,
                   preferences: pl.DataFrame | str | Path, *, stage: str, render_root: str | Path | None,
                   aggregate_annotators: bool, val_fraction: float, test_fraction: float, seed: int,
                   ) -> tuple[dict[str, pl.DataFrame], dict[str, str], dict[str, Any]]:
    """The examples of ``stage`` split by prompt: ({split: weighted examples}, {prompt_id: split}, data
    summary). The one split of a run: the data module and the ensemble (``rewardkit.train.ensemble``) both
    use it, with the settings of the run's :class:`~rewardkit.train.config.TrainConfig` (no defaults here)."""
    examples, summary = build_examples(items, pairs, preferences, stage, render_root=render_root,
                                       aggregate_annotators=aggregate_annotators)
    if examples.height == 0:
        raise TableError(f"no usable {stage!r} preferences (labels: {summary['labels']})")
    prompt_split = split_prompts(examples["prompt_id"].to_list(), val_fraction, test_fraction, seed)
    examples = examples.with_columns(
        pl.col("prompt_id").replace_strict(prompt_split, return_dtype=pl.Utf8).alias("split"))
    splits: dict[str, pl.DataFrame] = {}
    for s in SPLITS:
        part = examples.filter(pl.col("split") == s)
        splits[s] = add_prompt_weights(part) if part.height else part.with_columns(pl.lit(1.0).alias("weight"))
    summary["split"] = {s: {"examples": int(df.height), "prompts": int(df["prompt_id"].n_unique()) if df.height else 0,
                            "ties": int((df["target"] == 0.5).sum()) if df.height else 0}
                        for s, df in splits.items()}
    return splits, prompt_split, summary


class PreferencePairDataset(Dataset):
    """Examples of one split; ``__getitem__`` returns both items' views, the prompt, target and weight."""

    def __init__(self, examples: pl.DataFrame, loader: ViewCache, augment: Augment | None = None, seed: int = 0):
        self.examples = examples
        self.rows = examples.to_dicts()
        self.loader = loader
        self.augment = augment if augment is not None and augment.active else None
        self.seed = int(seed)

    def _views(self, render_dir: str, rng: np.random.Generator | None) -> torch.Tensor:
        views = self.loader(render_dir)
        return views if rng is None else self.augment(views, rng)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key``: an index, or ``(epoch, index)`` from :class:`EpochShuffleSampler` (``with_epoch``): the
        augmentation is then drawn from (seed, epoch, index), so a resumed run replays it exactly."""
        epoch, i = key if isinstance(key, tuple) else (0, key)
        r = self.rows[i]
        rng = np.random.default_rng([self.seed, 17, epoch, i]) if self.augment is not None else None
        return {
            "views_a": self._views(r["dir_a"], rng),
            "views_b": self._views(r["dir_b"], rng),
            "prompt": r["prompt"],
            "target": float(r["target"]),
            "weight": float(r.get("weight", 1.0)),
            "pair_id": r["pair_id"],
            "prompt_id": r["prompt_id"],
        }


def collate_pairs(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "views_a": torch.stack([b["views_a"] for b in batch]),
        "views_b": torch.stack([b["views_b"] for b in batch]),
        "prompts": [b["prompt"] for b in batch],
        "target": torch.tensor([b["target"] for b in batch], dtype=torch.float32),
        "weight": torch.tensor([b["weight"] for b in batch], dtype=torch.float32),
        "pair_ids": [b["pair_id"] for b in batch],
        "prompt_ids": [b["prompt_id"] for b in batch],
    }


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch) only, so resuming at an epoch boundary replays the same order."""

    def __init__(self, n: int, seed: int = 0, with_epoch: bool = False):
        self.n, self.seed, self.epoch, self.with_epoch = n, int(seed), 0, with_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()
        return iter([(self.epoch, i) for i in order] if self.with_epoch else order)

    def __len__(self) -> int:
        return self.n


# ------------------------------------------------------------------------------------------------- #
class PreferenceDataModule(L.LightningDataModule):
    """Lightning data module over the preferences table and render folders for one stage.

    ``modes``: the render modes of the model; ``image_size``: resize on load (the model resizes again if
    needed). ``probes``: optional parquet/DataFrame (pair_id, differs_in) for the disentanglement check.
    """

    def __init__(
        self,
        items: pl.DataFrame | str | Path,
        pairs: pl.DataFrame | str | Path,
        preferences: pl.DataFrame | str | Path,
        *,
        stage: str,
        modes: Sequence[str],
        image_size: int,
        views: Sequence[int] | None = None,
        render_root: str | Path | None = None,
        probes: pl.DataFrame | str | Path | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        aggregate_annotators: bool = False,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        augment: Augment | None = None,
        feature_model: Any = None,
        feature_cache_dir: str | Path | None = None,
    ):
        super().__init__()
        self.augment = augment
        # A StageRewardModel with a frozen image trunk: examples carry its cached per-view features
        # [V, F] instead of images (rewardkit.train.features), encoded once per render and tower.
        self.feature_model, self.feature_cache_dir = feature_model, feature_cache_dir
        if feature_model is not None and augment is not None and augment.active:
            raise ValueError("cached view features cannot be augmented: set augment_hflip=0 and augment_shift=0 "
                             "or feature_cache=false")
        self.feature_cache = None
        self.items, self.pairs, self.preferences = items, pairs, preferences
        self.stage, self.modes, self.image_size = stage, list(modes), int(image_size)
        self.views = list(views) if views is not None else None
        self.render_root, self.probes = render_root, probes
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.aggregate_annotators = aggregate_annotators
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.splits: dict[str, pl.DataFrame] = {}
        self.prompt_split: dict[str, str] = {}
        self.summary: dict[str, Any] = {}
        self._loader: ViewCache | None = None

    # -- setup --------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.splits, self.prompt_split, summary = split_examples(
            self.items, self.pairs, self.preferences, stage=self.stage, render_root=self.render_root,
            aggregate_annotators=self.aggregate_annotators, val_fraction=self.val_fraction,
            test_fraction=self.test_fraction, seed=self.seed)
        summary["seed"] = self.seed
        self.summary = summary
        if self.feature_model is None:
            self._loader = ViewCache(self.modes, self.image_size, self.views)
        else:
            self.feature_cache = TowerFeatures(self.feature_model, ViewCache(self.modes, self.image_size, self.views,
                                                                             max_items=0), self.feature_cache_dir)
            dirs = [d for df in self.splits.values() if df.height for d in (*df["dir_a"], *df["dir_b"])]
            self.feature_cache.prefetch(dirs)
            self._loader = self.feature_cache
            summary["feature_cache"] = {"dir": str(self.feature_cache.dir), **self.feature_cache.stats}

    def dataset(self, split: str) -> PreferencePairDataset:
        """The examples of ``split``; only ``train`` is augmented."""
        self.setup()
        return PreferencePairDataset(self.splits[split], self._loader,
                                     augment=self.augment if split == "train" else None, seed=self.seed)

    def _loader_for(self, ds: Dataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_pairs,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        if len(ds) == 0:
            raise TableError("the training split is empty (too few prompts for the validation/test fractions?)")
        return self._loader_for(ds, EpochShuffleSampler(len(ds), self.seed, with_epoch=ds.augment is not None))

    def val_dataloader(self) -> DataLoader | list:
        ds = self.dataset("val")
        return self._loader_for(ds) if len(ds) else []

    def test_dataloader(self) -> DataLoader | list:
        ds = self.dataset("test")
        return self._loader_for(ds) if len(ds) else []

    # -- disentanglement probes ----------------------------------------------------------------------
    def probe_dataset(self) -> tuple[PreferencePairDataset | None, dict[str, Any]]:
        """Probe pairs the stage should be blind to, labelled with the *other* question's answers.

        global stage: pairs differing only in texture, labelled by ``local`` answers;
        local stage: pairs differing only in geometry, labelled by ``global`` answers.
        """
        if self.probes is None:
            return None, {}
        self.setup()
        probes = self.probes if isinstance(self.probes, pl.DataFrame) else pl.read_parquet(self.probes)
        if not {"pair_id", "differs_in"} <= set(probes.columns):
            raise TableError(f"probes table needs columns pair_id, differs_in (has {probes.columns})")
        bad = probes.filter(~pl.col("differs_in").is_in(PROBE_KINDS))
        if bad.height:
            raise TableError(f"probes: differs_in must be one of {PROBE_KINDS}, got {bad['differs_in'].unique().to_list()}")
        kind = "texture" if self.stage == "global" else "geometry"
        other = "local" if self.stage == "global" else "global"
        examples, _ = build_examples(self.items, self.pairs, self.preferences, other, render_root=self.render_root,
                                     aggregate_annotators=self.aggregate_annotators)
        ids = probes.filter(pl.col("differs_in") == kind)["pair_id"]
        examples = examples.filter(pl.col("pair_id").is_in(ids.implode()) & (pl.col("target") != 0.5))
        info = {"differs_in": kind, "labels_from_question": other, "n_pairs": int(examples.height)}
        if examples.height == 0:
            return None, info
        if self.feature_cache is not None:
            self.feature_cache.prefetch([*examples["dir_a"], *examples["dir_b"]])
        return PreferencePairDataset(add_prompt_weights(examples), self._loader), info

    def probe_dataloader(self) -> tuple[DataLoader | None, dict[str, Any]]:
        ds, info = self.probe_dataset()
        return (self._loader_for(ds) if ds is not None else None), info


__all__ = [
    "EpochShuffleSampler", "PROBE_KINDS", "PreferenceDataModule", "PreferencePairDataset", "SPLITS", "ViewCache",
    "add_prompt_weights", "build_examples", "collate_pairs", "resolve_render_dir", "split_prompts",
]
