"""Run a training job from a ``TrainConfig``: fit, checkpoint/resume, evaluate, plot, export.

Outputs under ``out_dir``::

    checkpoints/last.ckpt, checkpoints/best-*.ckpt   Lightning checkpoints (resume with resume=auto)
    logs/csv/version_N/metrics.csv                   CSV log per run, N = 0, 1 after a resume, ... (and
                                                     logs/tensorboard/version_N when tensorboard is installed)
    metrics.json                                     validation (and test) metrics + disentanglement
    learning_curve.png                               train/val loss and validation accuracy
    model/config.json, model/model.safetensors       the trained StageRewardModel (no pickles)
    train_config.json                                the resolved config of this run
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from rewardkit import __version__
from rewardkit.devices import check_accelerator
from rewardkit.eval.metrics import chance_credit_accuracy, preference_metrics
from rewardkit.models.stage import StageRewardModel
from rewardkit.train.augment import Augment
from rewardkit.train.config import TrainConfig
from rewardkit.train.data import PreferenceDataModule
from rewardkit.train.distributed import on_rank_zero
from rewardkit.train.module import RewardModelModule
from rewardkit.train.progress import EpochLines, progress_mode

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, its metrics, the best/last Lightning checkpoints, the
    exported model folder, and the fitted module and data module (on every rank of a DDP run)."""
    out_dir: Path
    metrics: dict[str, Any]
    best_checkpoint: str | None
    last_checkpoint: str | None
    model_dir: Path | None
    module: RewardModelModule = field(repr=False)
    datamodule: PreferenceDataModule = field(repr=False)
    # This process's rank and the run's process count: with world_size > 1 only rank 0 evaluated and exported
    # (``module`` holds the evaluated weights there, the last trained weights on the other ranks).
    global_rank: int = 0
    world_size: int = 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0


def build_datamodule(cfg: TrainConfig, image_size: int, model: StageRewardModel | None = None) -> PreferenceDataModule:
    """The data module of ``cfg``; with ``cfg.feature_cache`` its examples are ``model``'s cached trunk features."""
    if cfg.feature_cache and (model is None or model.frozen_image_trunk() is None):
        raise ValueError("feature_cache needs a frozen image trunk: set model.unlocked_image_blocks=0 "
                         "(and model.train_image_head=true to train the tower's projection)")
    return PreferenceDataModule(
        cfg.items, cfg.pairs, cfg.preferences, stage=cfg.stage, modes=cfg.model.modes,
        image_size=cfg.image_size or image_size, views=cfg.views, render_root=cfg.render_root, probes=cfg.probes,
        val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
        aggregate_annotators=cfg.aggregate_annotators, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        seed=cfg.seed, augment=Augment(hflip=cfg.augment_hflip, shift=cfg.augment_shift),
        feature_model=model if cfg.feature_cache else None, feature_cache_dir=cfg.feature_cache_dir,
    )


def build_module(cfg: TrainConfig) -> RewardModelModule:
    return RewardModelModule(
        cfg.model, lr=cfg.lr, backbone_lr=cfg.backbone_lr, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, lr_schedule=cfg.lr_schedule, margin=cfg.margin, tie_offset=cfg.tie_offset,
        seed=cfg.seed, ece_bins=cfg.ece_bins,
    )


def _resume_path(cfg: TrainConfig, ckpt_dir: Path) -> str | None:
    if cfg.resume in (None, "", "none", "never", False):
        return None
    if cfg.resume == "auto":
        return _newest_loadable_checkpoint(ckpt_dir)
    p = Path(str(cfg.resume))
    if not p.exists():
        raise FileNotFoundError(f"resume checkpoint {p} not found")
    return str(p)


def _newest_loadable_checkpoint(ckpt_dir: Path) -> str | None:
    """``resume=auto``: ``last.ckpt`` if it loads, else the newest other checkpoint of the folder that loads
    (a previous ``last-v*.ckpt`` or a ``best-*.ckpt``), with a warning naming each unreadable file. None when
    the folder has no checkpoint (a fresh start); a clear error when it has some and none of them loads."""
    if not ckpt_dir.is_dir():
        return None
    last = ckpt_dir / "last.ckpt"
    others = sorted((p for p in ckpt_dir.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = ([last] if last.exists() else []) + others
    bad: list[str] = []
    for p in candidates:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "state_dict" not in state:
                raise ValueError("no state_dict in it")
        except Exception as exc:  # a torn or corrupt file: try the next one
            reason = f"{p}: cannot load checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            bad.append(reason)
            log.warning("resume=auto: %s; trying an older checkpoint", reason)
            warnings.warn(f"resume=auto: {reason}; trying an older checkpoint", RuntimeWarning, stacklevel=3)
            continue
        del state
        if bad:
            log.warning("resume=auto: resuming from %s instead", p)
            warnings.warn(f"resume=auto: resuming from {p} instead", RuntimeWarning, stacklevel=3)
        return str(p)
    if bad:
        raise RuntimeError(f"resume=auto: no loadable checkpoint in {ckpt_dir} ({'; '.join(bad)}); move the folder "
                           "away or set resume=none to start fresh")
    return None


def build_trainer(cfg: TrainConfig, out_dir: Path, callbacks: list | None = None,
                  has_val: bool = True) -> tuple[L.Trainer, ModelCheckpoint]:
    ckpt = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best-{epoch:03d}-{step:06d}",
                           monitor=cfg.monitor if has_val else None, mode="min" if "loss" in cfg.monitor or "ece" in cfg.monitor else "max",
                           save_top_k=cfg.save_top_k, save_last=True, auto_insert_metric_name=False)
    # One log version per run (version_0, version_1 after a resume, ...): a resumed run keeps the earlier log.
    version = len(metrics_csv_paths(out_dir))
    progress = progress_mode(cfg.progress_bar)  # stderr: a bar on a terminal, one line per epoch otherwise
    if progress == "lines":
        callbacks = [*(callbacks or []), EpochLines()]
    loggers: list = [CSVLogger(out_dir / "logs", name="csv", version=version)]
    if cfg.tensorboard and (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        loggers.append(TensorBoardLogger(out_dir / "logs", name="tensorboard", version=version, default_hp_metric=False))
    trainer = L.Trainer(
        default_root_dir=out_dir, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision, max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, logger=loggers,
        callbacks=[ckpt, *(callbacks or [])], log_every_n_steps=cfg.log_every_n_steps,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch, deterministic=cfg.deterministic,
        gradient_clip_val=cfg.gradient_clip_val, accumulate_grad_batches=cfg.accumulate_grad_batches,
        enable_progress_bar=progress == "bar", enable_model_summary=False, num_sanity_val_steps=0,
    )
    return trainer, ckpt


def model_from_checkpoint(path: str | Path) -> StageRewardModel:
    """The StageRewardModel of a Lightning checkpoint of this module (weights only; the backbone's original
    ``pretrained`` source is not reloaded or downloaded)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = StageRewardModel.from_config_dict(ckpt["hyper_parameters"]["model"])
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return model.eval()


@torch.no_grad()
def predict_deltas(model: StageRewardModel, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Δ = r_a − r_b, target, weight) over a loader of pair batches, in eval mode."""
    was = model.training
    model.eval()
    ds, ts, ws = [], [], []
    try:
        for batch in loader:
            b = batch["views_a"].shape[0]
            text = model.encode_text(batch["prompts"]) if model.config.use_alignment else None
            views = torch.cat([batch["views_a"], batch["views_b"]], 0).to(model.logit_scale.device)
            r = model(views, text_features=None if text is None else torch.cat([text, text], 0))
            ds.append((r[:b] - r[b:]).float().cpu().numpy())
            ts.append(batch["target"].numpy())
            ws.append(batch["weight"].numpy())
    finally:
        model.train(was)
    if not ds:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return np.concatenate(ds), np.concatenate(ts), np.concatenate(ws)


def evaluate(model: StageRewardModel, dm: PreferenceDataModule, *, ece_bins: int = 10, margin: float = 0.0) -> dict[str, Any]:
    """Validation (and test) metrics and the disentanglement check, as a JSON-ready dict."""
    out: dict[str, Any] = {}
    val_loader = dm.val_dataloader()
    tie_threshold = temperature = None
    if val_loader:
        d, t, w = predict_deltas(model, val_loader)
        out["val"] = preference_metrics(d, t, w, n_bins=ece_bins, margin=margin)
        tie_threshold, temperature = out["val"]["tie_threshold"], out["val"]["temperature"]
    test_loader = dm.test_dataloader()
    if test_loader:
        d, t, w = predict_deltas(model, test_loader)
        out["test"] = preference_metrics(d, t, w, tie_threshold=tie_threshold, temperature=temperature,
                                         n_bins=ece_bins, margin=margin)
    probe_loader, info = dm.probe_dataloader()
    if info:
        dis = dict(info)
        if probe_loader is not None:
            d, t, _ = predict_deltas(model, probe_loader)
            dis["accuracy"] = chance_credit_accuracy(d, t)
            dis["strict_accuracy"] = float(np.mean(np.where(t > 0.5, d > 0, d < 0))) if d.size else float("nan")
            dis["mean_abs_delta"] = float(np.mean(np.abs(d))) if d.size else float("nan")
        else:
            dis["accuracy"] = None
        dis["expected"] = "near 0.5 (the stage should be blind to this difference)"
        out["disentanglement"] = dis
    return out


def _finite(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _finite(x.item())
    return x


def metrics_csv_paths(out_dir: str | Path) -> list[Path]:
    """Lightning CSV logs of a run folder, oldest first (one per run; a resume adds a version)."""
    found = list((Path(out_dir) / "logs" / "csv").glob("version_*/metrics.csv"))
    return sorted(found, key=lambda p: int(p.parent.name.split("_")[-1]))


def read_metrics_log(out_dir: str | Path):
    """All CSV log versions of a run folder as one polars frame (rows of later versions win per step)."""
    import polars as pl

    frames = [pl.read_csv(p, infer_schema_length=None) for p in metrics_csv_paths(out_dir)]
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed")


def plot_learning_curve(out_dir: str | Path, out_png: str | Path, title: str = "", *,
                        selected_step: int | None = None, selected_label: str = "selected checkpoint") -> Path | None:
    """Train loss per step, train/val loss and validation accuracy per epoch, from the run's CSV logs;
    a dashed line at ``selected_step`` marks the checkpoint that was evaluated and exported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_metrics_log(out_dir)
    if df.height == 0 or "step" not in df.columns:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))

    def series(col: str, x: str = "step"):
        if col not in df.columns:
            return None, None
        s = df.select(x, col).drop_nulls()
        return (s[x].to_numpy(), s[col].to_numpy()) if s.height else (None, None)

    for col, label in (("train/loss_step", "train loss (step)"), ("train/loss_epoch", "train loss (epoch)"),
                       ("val/bt_loss", "val BT loss")):
        x, y = series(col)
        if x is not None:
            ax1.plot(x, y, label=label, marker="o" if "epoch" in col or "val" in col else None, ms=3)
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    for col, label in (("val/pairwise_accuracy", "val pairwise acc"), ("val/tie_band_accuracy", "val tie-band acc"),
                       ("train/pairwise_accuracy", "train pairwise acc")):
        x, y = series(col)
        if x is not None:
            ax2.plot(x, y, label=label, marker="o", ms=3)
    if selected_step is not None:
        for ax in (ax1, ax2):
            ax.axvline(selected_step, color="crimson", ls="--", lw=1.2, label=selected_label if ax is ax2 else None)
    ax2.set_xlabel("step"), ax2.set_ylabel("accuracy"), ax2.set_ylim(0, 1.02), ax2.legend(fontsize=8), ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


class _WriteConfig(L.Callback):
    """Write ``train_config.json`` once, from global rank 0, when the run's ranks are known."""

    def __init__(self, cfg: TrainConfig, out_dir: Path) -> None:
        self.cfg, self.out_dir = cfg, out_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            (self.out_dir / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2, sort_keys=True))


def train(cfg: TrainConfig, *, callbacks: list | None = None) -> TrainResult:
    """Fit the stage model of ``cfg`` and write every output under ``cfg.out_dir``.

    With several processes (``devices`` x ``num_nodes``, ``strategy: ddp``) every rank trains, global rank 0
    alone evaluates, writes the reports and exports the model, and the other ranks wait for it; every rank
    returns rank 0's metrics (:mod:`rewardkit.train.distributed`)."""
    check_accelerator(cfg.accelerator)  # a one-line DeviceError before any work, not Lightning's traceback
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    dm = build_datamodule(cfg, module.model.load_size, module.model)
    dm.setup()
    trainer, ckpt = build_trainer(cfg, out_dir, [_WriteConfig(cfg, out_dir), *(callbacks or [])],
                                  has_val=dm.splits["val"].height > 0)
    resume = _resume_path(cfg, out_dir / "checkpoints")
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    fit_s = time.perf_counter() - t0

    best = ckpt.best_model_path or None
    last = ckpt.last_model_path or None
    # the epoch and step of the weights that are evaluated and exported (marked on the learning curves)
    selected_epoch, selected_step = max(int(trainer.current_epoch) - 1, 0), int(trainer.global_step)
    used = "last"

    def evaluate_and_export() -> dict[str, Any]:  # global rank 0 only
        nonlocal selected_epoch, selected_step, used
        if cfg.use_best_checkpoint and best and Path(best).exists():
            ck = torch.load(best, map_location="cpu", weights_only=True)
            module.load_state_dict(ck["state_dict"])
            used = "best"
            selected_epoch, selected_step = int(ck.get("epoch", selected_epoch)), int(ck.get("global_step", selected_step))
        model = module.model.cpu()
        metrics = evaluate(model, dm, ece_bins=cfg.ece_bins, margin=cfg.margin)
        metrics.update({
            "stage": cfg.stage,
            "modes": model.modes,
            "backbone": cfg.model.backbone.to_dict(),
            "weights": used,
            "checkpoint": best if used == "best" else last,
            "selected_epoch": selected_epoch,
            "selected_step": selected_step,
            "epochs": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "fit_seconds": round(fit_s, 2),
            "resumed_from": resume,
            "world_size": int(trainer.world_size),  # training processes (devices x num_nodes)
            "num_nodes": int(trainer.num_nodes),
            "data": dm.summary,
            "rewardkit_version": __version__,
        })
        metrics = _finite(metrics)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        plot_learning_curve(out_dir, out_dir / "learning_curve.png", title=f"rewardkit {cfg.stage} stage",
                            selected_step=selected_step,
                            selected_label=f"exported: {used} checkpoint (epoch {selected_epoch}, step {selected_step})")
        if cfg.export:
            model.save_pretrained(out_dir / "model", extra={
                "training": {"data": metrics.get("data"), "metrics": {k: metrics.get(k) for k in ("val", "test", "disentanglement")},
                             "train_config": cfg.to_dict()}})
        return metrics

    metrics = on_rank_zero(trainer, evaluate_and_export)  # the other ranks wait here for rank 0
    return TrainResult(out_dir=out_dir, metrics=metrics, best_checkpoint=best, last_checkpoint=last,
                       model_dir=out_dir / "model" if cfg.export else None, module=module, datamodule=dm,
                       global_rank=int(trainer.global_rank), world_size=int(trainer.world_size))


__all__ = ["TrainResult", "build_datamodule", "build_module", "build_trainer", "evaluate", "metrics_csv_paths", "model_from_checkpoint",
           "plot_learning_curve", "predict_deltas", "read_metrics_log", "train"]
