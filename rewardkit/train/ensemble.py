"""Training an ensemble of reward heads on a trained stage model's frozen towers (seconds on a CPU).

``train_ensemble(model, train_config, EnsembleConfig(members=4))`` keeps the trained
:class:`~rewardkit.models.StageRewardModel` as member 0 and fits ``members - 1`` further
:class:`~rewardkit.models.RewardHead` s (view fusion, quality head, logit scale) on the same training
preferences, each on its own bootstrap resample of the training pairs (``bootstrap``) and with its own seed
(its start: the trained head moved by seeded noise). The towers are frozen: every candidate's per-view image features and every
prompt's text features are computed once (:class:`HeadFeatures`), so a member is a few hundred Adam steps
on small tensors. The result is a :class:`~rewardkit.models.StageEnsemble` whose members' std is the
uncertainty the ensemble scorer reports (:mod:`rewardkit.scoring.ensemble`).

:func:`fit_heads` is the same fit on any labelled examples and features (the label-efficiency benchmark
retrains with it every round).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from rewardkit.models.ensemble import RewardHead, StageEnsemble, head_reward
from rewardkit.models.losses import bradley_terry_loss
from rewardkit.models.stage import StageRewardModel
from rewardkit.train.config import TrainConfig
from rewardkit.train.data import ViewCache, split_examples
from rewardkit.train.features import TowerFeatures


@dataclass
class EnsembleConfig:
    """The ensemble of one stage (``export.ensemble`` in params.yaml)."""

    members: int = 1  # 1: no ensemble (the stage model alone, exported as kind stage-model)
    bootstrap: bool = True  # each added member trains on a bootstrap resample of the training pairs
    seed: int = 0  # member i draws its resample and its starting noise from seed + i
    epochs: int = 20  # passes over the (resampled) training pairs per member
    lr: float = 0.001
    init_noise: float = 0.5  # member i starts at the trained head + N(0, (init_noise * each tensor's std)^2)
    batch_size: int = 64
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"ensemble.members must be >= 1, got {self.members}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("ensemble.epochs and ensemble.batch_size must be >= 1 and ensemble.lr > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HeadFeatures:
    """Per-view image features [V, D] of each render folder and text features [D] of each prompt, from a
    model's towers, computed once (batches of ``batch_size`` candidates, no gradients)."""

    def __init__(self, model: StageRewardModel, views: ViewCache, batch_size: int = 32,
                 feature_cache: bool = False, feature_cache_dir: str | Path | None = None):
        self.model, self.views, self.batch_size = model.eval(), views, int(batch_size)
        self.image: dict[str, torch.Tensor] = {}
        self.text: dict[str, torch.Tensor] = {}
        self.mode_index: torch.Tensor | None = None
        self.view_index: torch.Tensor | None = None
        # with a frozen trunk and the training's feature cache on, the trunk's features come from that cache
        # (what training encoded, by the same key) and only the image head runs here
        self.trunk: TowerFeatures | None = None
        if feature_cache and model.frozen_image_trunk() is not None:
            self.trunk = TowerFeatures(model, views, feature_cache_dir)

    @torch.no_grad()
    def add_dirs(self, dirs: Sequence[str]) -> None:
        todo = [d for d in dict.fromkeys(str(x) for x in dirs) if d not in self.image]
        if self.trunk is not None:
            self.trunk.prefetch(todo)
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            x = torch.stack([self.trunk(d) if self.trunk is not None else self.views(d) for d in chunk])
            feats, mi, vi = self.model.encode_views(x)
            self.mode_index, self.view_index = mi, vi
            for d, f in zip(chunk, feats.float()):
                self.image[d] = f.clone()

    @torch.no_grad()
    def add_prompts(self, prompts: Sequence[str]) -> None:
        if not self.model.config.use_alignment:
            return
        todo = [p for p in dict.fromkeys(prompts) if p not in self.text]
        for i in range(0, len(todo), 256):
            chunk = todo[i:i + 256]
            for p, t in zip(chunk, self.model.encode_text(chunk).float()):
                self.text[p] = t.clone()

    def batch(self, dirs: Sequence[str], prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        img = torch.stack([self.image[str(d)] for d in dirs])
        txt = None
        if self.model.config.use_alignment:
            txt = torch.nn.functional.normalize(torch.stack([self.text[p] for p in prompts]), dim=-1)
        return img, txt

    def rewards(self, head: Any, dirs: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """One head's rewards [B] (``head``: a RewardHead or the model itself for its own head)."""
        img, txt = self.batch(dirs, prompts)
        mask = torch.ones(img.shape[:2], dtype=torch.bool)
        return head_reward(head.fusion, head.quality, head.logit_scale, img, self.mode_index, self.view_index,
                           mask, txt)


def _perturb(head: RewardHead, gen: torch.Generator, scale: float) -> None:
    """Move every weight of the head by Gaussian noise of ``scale`` times that tensor's own std (its mean
    magnitude for constant tensors): each member starts from its own point near the trained head, so the
    members stay as accurate as the model while the bootstrap fit pulls them apart."""
    if scale <= 0:
        return
    with torch.no_grad():
        for p in head.parameters():
            ref = float(p.std()) if p.numel() > 1 else 0.0
            ref = ref if ref > 0 else float(p.abs().mean()) or 1e-2
            p.add_(torch.randn(p.shape, generator=gen) * scale * ref)


def _reinit(head: RewardHead, gen: torch.Generator) -> None:
    """A newly initialised head (as a new StageRewardModel's, the quality head's last layer drawn small)."""
    with torch.no_grad():
        for mod in head.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (1.0 / mod.in_features) ** 0.5)
                mod.bias.zero_()
            elif isinstance(mod, torch.nn.LayerNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
        for name, p in head.fusion.named_parameters(recurse=False):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02 if name != "query" else torch.zeros_like(p))
        if head.quality is not None:
            last = [m for m in head.quality.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.mul_(0.1)


def fit_heads(model: StageRewardModel, feats: HeadFeatures, examples: pl.DataFrame, cfg: EnsembleConfig, *,
              n_heads: int | None = None, fresh: bool = False, alignment: bool = True) -> list[RewardHead]:
    """``n_heads`` (default ``cfg.members - 1``) heads fitted with the Bradley-Terry loss on ``examples``
    (dir_a, dir_b, prompt, target and optionally weight), member i on a bootstrap resample drawn from
    ``cfg.seed + i`` (i from 1), each starting from the model's own head moved by ``cfg.init_noise``
    (``fresh``: from a newly initialised head instead, which knows nothing of the model's labels).
    ``alignment=False`` fits the quality head alone (no prompt-alignment term)."""
    n_heads = cfg.members - 1 if n_heads is None else n_heads
    if examples.height == 0 or n_heads <= 0:
        return []
    feats.add_dirs([*examples["dir_a"], *examples["dir_b"]])
    feats.add_prompts(examples["prompt"].to_list())
    dir_a, dir_b = examples["dir_a"].to_list(), examples["dir_b"].to_list()
    prompts = examples["prompt"].to_list()
    target = torch.tensor(examples["target"].to_list(), dtype=torch.float32)
    weight = torch.tensor(examples["weight"].to_list(), dtype=torch.float32) if "weight" in examples.columns \
        else torch.ones(len(prompts))
    ia, ta = feats.batch(dir_a, prompts)
    if not alignment:
        ta = None
    ib, _ = feats.batch(dir_b, prompts)
    mask = torch.ones(ia.shape[:2], dtype=torch.bool)
    heads = []
    n = len(prompts)
    for i in range(1, n_heads + 1):
        rng = np.random.default_rng(cfg.seed + i)
        idx = rng.integers(0, n, n) if cfg.bootstrap else np.arange(n)
        gen = torch.Generator().manual_seed(cfg.seed + i)
        head = RewardHead.from_model(model)
        if fresh:
            _reinit(head, gen)
        else:
            _perturb(head, gen, cfg.init_noise)
        head.train()
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        for _ in range(cfg.epochs):
            order = idx[rng.permutation(len(idx))]
            for s in range(0, len(order), cfg.batch_size):
                b = torch.from_numpy(order[s:s + cfg.batch_size])
                t = None if ta is None else ta[b]
                ra = head_reward(head.fusion, head.quality, head.logit_scale, ia[b], feats.mode_index,
                                 feats.view_index, mask[b], t)
                rb = head_reward(head.fusion, head.quality, head.logit_scale, ib[b], feats.mode_index,
                                 feats.view_index, mask[b], t)
                loss = bradley_terry_loss(ra, rb, target[b], weight[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        heads.append(head.eval())
    return heads


@torch.no_grad()
def member_offsets(model: StageRewardModel, heads: Sequence[RewardHead], feats: HeadFeatures,
                   dirs: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
    """Each member's mean reward on (dir, prompt) minus the base's: subtracted, it puts every member on the
    base's level (Bradley-Terry rewards are defined up to a constant)."""
    feats.add_dirs(dirs)
    feats.add_prompts(prompts)
    means = [float(feats.rewards(h, dirs, prompts).mean()) for h in [model, *heads]]
    return torch.tensor([m - means[0] for m in means], dtype=torch.float32)


@torch.no_grad()
def pairwise_accuracy(rewards_a: torch.Tensor, rewards_b: torch.Tensor, target: torch.Tensor) -> float:
    """Accuracy on decided pairs (target 0 or 1) of sign(r_a - r_b)."""
    keep = (target == 0) | (target == 1)
    if not bool(keep.any()):
        return float("nan")
    pred = (rewards_a > rewards_b).float()
    return float((pred[keep] == target[keep]).float().mean())


def train_ensemble(model: StageRewardModel, train_config: TrainConfig | Mapping[str, Any], cfg: EnsembleConfig, *,
                   items: str | Path | None = None, pairs: str | Path | None = None,
                   preferences: str | Path | None = None) -> tuple[StageEnsemble, dict[str, Any]]:
    """The ensemble of ``model`` (trained with ``train_config``, the run's ``train_config.json``): its
    training preferences and validation split are rebuilt from that config (tables overridable), the heads
    fitted on the training split, each member's and the ensemble's validation accuracy reported."""
    tc = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(train_config)
    threads = torch.get_num_threads()
    if tc.num_threads:  # the run's thread count (1 is fastest for these small tensors on a busy CPU)
        torch.set_num_threads(tc.num_threads)
    try:
        return _train_ensemble(model, tc, cfg, items, pairs, preferences)
    finally:
        torch.set_num_threads(threads)


def _train_ensemble(model: StageRewardModel, tc: TrainConfig, cfg: EnsembleConfig, items: Any, pairs: Any,
                    preferences: Any) -> tuple[StageEnsemble, dict[str, Any]]:
    t0 = time.perf_counter()
    splits, _, _ = split_examples(items or tc.items, pairs or tc.pairs, preferences or tc.preferences,
                                  stage=tc.stage, render_root=tc.render_root,
                                  aggregate_annotators=tc.aggregate_annotators, val_fraction=tc.val_fraction,
                                  test_fraction=tc.test_fraction, seed=tc.seed)
    train_ex, val_ex = splits["train"], splits["val"]
    size = int(tc.image_size or model.load_size)
    feats = HeadFeatures(model, ViewCache(model.modes, size, tc.views), feature_cache=tc.feature_cache,
                         feature_cache_dir=tc.feature_cache_dir)
    feats.add_dirs([*train_ex["dir_a"], *train_ex["dir_b"], *val_ex["dir_a"], *val_ex["dir_b"]])
    feats.add_prompts([*train_ex["prompt"], *val_ex["prompt"]])
    t_feat = time.perf_counter() - t0
    heads = fit_heads(model, feats, train_ex, cfg)
    dirs = list(dict.fromkeys([*train_ex["dir_a"], *train_ex["dir_b"]]))
    prompt_of = {}
    for a, b, p in zip(train_ex["dir_a"], train_ex["dir_b"], train_ex["prompt"]):
        prompt_of.setdefault(a, p)
        prompt_of.setdefault(b, p)
    offsets = member_offsets(model, heads, feats, dirs, [prompt_of[d] for d in dirs]) if dirs else None
    ensemble = StageEnsemble(model, heads, offsets).eval()
    report: dict[str, Any] = {"members": ensemble.members, "config": cfg.to_dict(),
                              "train_pairs": int(train_ex.height), "val_pairs": int(val_ex.height)}
    if val_ex.height:
        torch.set_grad_enabled(False)
        try:
            _validate(report, model, heads, feats, val_ex)
        finally:
            torch.set_grad_enabled(True)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["feature_seconds"] = round(t_feat, 2)
    if feats.trunk is not None:
        report["feature_cache"] = feats.trunk.stats  # the trunk features read from training's cache / encoded
    return ensemble, report


def _validate(report: dict[str, Any], model: StageRewardModel, heads: Sequence[RewardHead], feats: HeadFeatures,
              val_ex: pl.DataFrame) -> None:
    if True:
        feats.add_dirs([*val_ex["dir_a"], *val_ex["dir_b"]])
        feats.add_prompts(val_ex["prompt"].to_list())
        target = torch.tensor(val_ex["target"].to_list(), dtype=torch.float32)
        ra = torch.stack([feats.rewards(h, val_ex["dir_a"].to_list(), val_ex["prompt"].to_list())
                          for h in [model, *heads]])
        rb = torch.stack([feats.rewards(h, val_ex["dir_b"].to_list(), val_ex["prompt"].to_list())
                          for h in [model, *heads]])
        report["val_member_accuracy"] = [pairwise_accuracy(a, b, target) for a, b in zip(ra, rb)]
        report["val_ensemble_accuracy"] = pairwise_accuracy(ra.mean(0), rb.mean(0), target)
        report["val_mean_pair_std"] = float((ra - rb).std(0, unbiased=False).mean()) if len(ra) > 1 else 0.0


@torch.no_grad()
def item_member_rewards(model: StageRewardModel | StageEnsemble, items: pl.DataFrame, *,
                        items_path: str | Path | None = None, render_root: str | Path | None = None,
                        image_size: int | None = None, views: Sequence[int] | None = None,
                        batch_size: int = 32) -> tuple[np.ndarray, dict[str, int]]:
    """Every member's reward of every item (``item_id, prompt, render_dir``): [N, items] (offsets applied)
    and item_id -> column. A plain model is one member. The towers run once per item."""
    from rewardkit.train.data import resolve_render_dir

    base = model.base if isinstance(model, StageEnsemble) else model
    heads = list(model.heads) if isinstance(model, StageEnsemble) else []
    offsets = model.offsets.cpu().numpy() if isinstance(model, StageEnsemble) else np.zeros(1)
    feats = HeadFeatures(base, ViewCache(base.modes, int(image_size or base.load_size), views), batch_size)
    dirs = [str(resolve_render_dir(d, render_root, items_path)) for d in items["render_dir"]]
    prompts = items["prompt"].to_list()
    feats.add_dirs(dirs)
    feats.add_prompts(prompts)
    out = np.stack([feats.rewards(h, dirs, prompts).float().numpy() for h in [base, *heads]])
    return out - offsets[:, None], {x: i for i, x in enumerate(items["item_id"].to_list())}


__all__ = ["EnsembleConfig", "HeadFeatures", "fit_heads", "item_member_rewards", "member_offsets", "pairwise_accuracy", "train_ensemble"]
