"""The Lightning module: a ``StageRewardModel`` trained with the Bradley–Terry loss on preference pairs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch

from rewardkit.eval.metrics import preference_metrics
from rewardkit.models.losses import BradleyTerryLoss
from rewardkit.models.stage import StageModelConfig, StageRewardModel

# Parameters that get no weight decay (norms, biases, embeddings, scales).
_NO_DECAY_HINTS = ("bias", "ln_", "norm", "embed", "logit_scale", "class_embedding", "positional_embedding", "query")


class RewardModelModule(L.LightningModule):
    """The Lightning module that trains one :class:`~rewardkit.models.stage.StageRewardModel` on preference
    pairs: Bradley–Terry loss on (A, B, target, weight) batches, AdamW with a separate backbone learning rate,
    warm-up and cosine/constant schedule, and the validation metrics (pairwise and tie-band accuracy, BT
    loss, ECE). Built by :func:`rewardkit.train.train` from a :class:`~rewardkit.train.TrainConfig`."""

    def __init__(
        self,
        model: Mapping[str, Any] | StageModelConfig,
        *,
        lr: float = 1e-4,
        backbone_lr: float | None = None,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        margin: float = 0.0,
        tie_offset: bool = True,
        seed: int = 0,
        ece_bins: int = 10,
    ):
        super().__init__()
        model_cfg = model.to_dict() if isinstance(model, StageModelConfig) else dict(model)
        self.save_hyperparameters({"model": model_cfg, "lr": lr, "backbone_lr": backbone_lr,
                                   "weight_decay": weight_decay, "warmup_steps": warmup_steps,
                                   "lr_schedule": lr_schedule, "margin": margin, "tie_offset": tie_offset,
                                   "seed": seed, "ece_bins": ece_bins})
        self.model = StageRewardModel(model_cfg)
        self.criterion = BradleyTerryLoss(margin=margin, tie_offset=tie_offset)
        self._val: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    # -- forward ------------------------------------------------------------------------------------
    def pair_rewards(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of both sides of each pair in one forward (prompt features computed once)."""
        b = batch["views_a"].shape[0]
        text = self.model.encode_text(batch["prompts"]) if self.model.config.use_alignment else None
        views = torch.cat([batch["views_a"], batch["views_b"]], dim=0)
        r = self.model(views, text_features=None if text is None else torch.cat([text, text], 0), generator=generator)
        return r[:b], r[b:]

    def _step_generator(self) -> torch.Generator:
        # View dropout drawn from (seed, step): a resumed run draws exactly what the straight run drew.
        g = torch.Generator()
        g.manual_seed(int(self.hparams.seed) * 1_000_003 + int(self.global_step))
        return g

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        r_a, r_b = self.pair_rewards(batch, self._step_generator())
        loss = self.criterion(r_a, r_b, batch["target"], batch["weight"])
        delta = (r_a - r_b).detach()
        t = batch["target"]
        decided = (t - 0.5).abs() > 1e-6
        acc = ((delta > 0) == (t > 0.5))[decided].float().mean() if decided.any() else torch.tensor(float("nan"))
        bs = len(batch["prompts"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("train/pairwise_accuracy", acc, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/logit_scale", self.model.logit_scale.detach().exp(), on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        r_a, r_b = self.pair_rewards(batch)
        self._val.append(((r_a - r_b).float().cpu().numpy(), batch["target"].cpu().numpy(),
                          batch["weight"].cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        d, t, w = (np.concatenate(x) for x in zip(*self._val))
        self._val = []
        m = preference_metrics(d, t, w, n_bins=int(self.hparams.ece_bins), margin=float(self.hparams.margin))
        for key in ("pairwise_accuracy", "tie_band_accuracy", "bt_loss", "ece", "ece_calibrated"):
            v = m[key]
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                self.log(f"val/{key}", float(v), prog_bar=key == "pairwise_accuracy", sync_dist=True)

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        backbone_lr = hp.backbone_lr if hp.backbone_lr is not None else hp.lr
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            lr = backbone_lr if name.startswith("backbone.") else hp.lr
            wd = 0.0 if (p.ndim < 2 or any(h in name for h in _NO_DECAY_HINTS)) else hp.weight_decay
            groups.setdefault((lr, wd), []).append(p)
        if not groups:
            raise ValueError("the model has no trainable parameters (check the freezing options)")
        param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        opt = torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer is not None else 1
        warmup, schedule = int(hp.warmup_steps), hp.lr_schedule

        def factor(step: int) -> float:
            if warmup > 0 and step < warmup:
                return (step + 1) / warmup
            if schedule == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


__all__ = ["RewardModelModule"]
