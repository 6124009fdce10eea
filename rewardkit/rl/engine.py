"""How a Hi-GRPO run uses its devices: precision and master-weight dtype, activation checkpointing,
the learning-rate schedule and the experiment loggers (all through Lightning Fabric / torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from rewardkit.rl.config import HiGRPOConfig

__all__ = ["checkpoint_dtype", "resolve_precision", "master_dtype", "decoder_layer_classes",
           "checkpoint_decoder_layers", "lr_factor_fn", "build_loggers"]

def checkpoint_dtype(path: str | Path) -> str | None:
    """The weight dtype a Hugging Face checkpoint folder declares (``dtype`` / ``torch_dtype`` of its
    config.json or of its ``text_config``), or None when there is no checkpoint (yet) or none is declared."""
    f = Path(path) / "config.json"
    if not str(path) or not f.is_file():
        return None
    try:
        c = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    for d in (c, c.get("text_config") or {}):
        v = d.get("dtype") or d.get("torch_dtype")
        if isinstance(v, str):
            return v.removeprefix("torch.")
    return None


def resolve_precision(precision: str, ckpt_dtype: str | None, accelerator: str = "auto") -> str:
    """Lightning precision for ``precision: auto``: bf16-mixed for a bf16 checkpoint, 16-mixed for an
    fp16 one on CUDA (fp16 autocast needs a GPU; on CPU it trains in 32-true), 32-true otherwise."""
    if precision != "auto":
        return precision
    if ckpt_dtype == "bfloat16":
        return "bf16-mixed"
    if ckpt_dtype == "float16":
        cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
        return "16-mixed" if cuda else "32-true"
    return "32-true"


def master_dtype(precision: str) -> str:
    """Dtype to load the trained weights in: the low precision itself for "-true" low precisions, else
    float32 (mixed precision keeps fp32 master weights and fp32 optimizer states)."""
    p = str(precision)
    if p in ("bf16-true", "bf16"):
        return "bfloat16"
    if p in ("16-true", "16", "fp16-true"):
        return "float16"
    return "float32"


def decoder_layer_classes(model: torch.nn.Module) -> tuple[type, ...]:
    """The transformer block classes of a Hugging Face model (its ``_no_split_modules``): the unit of
    activation checkpointing and of FSDP auto-wrapping."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(f"{type(model).__name__} declares no decoder layer classes (_no_split_modules)")
    return tuple(classes)


def checkpoint_decoder_layers(model: torch.nn.Module) -> int:
    """Wrap every decoder layer in torch's non-reentrant activation checkpoint; returns how many. Works in
    eval mode too (Hugging Face's own gradient checkpointing only acts in train mode, and the trainer
    keeps the policy in eval mode so dropout cannot change the ratio)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    classes = decoder_layer_classes(model)
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: isinstance(m, classes),
    )
    return sum(1 for m in model.modules() if type(m).__name__ == "CheckpointWrapper")


def lr_factor_fn(cfg: "HiGRPOConfig"):
    """``step -> factor`` of ``cfg.lr`` for torch's LambdaLR: linear warmup over ``lr_warmup_steps``, then
    constant, cosine or linear decay to ``lr_min_ratio`` at ``steps``."""
    if cfg.lr_schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"lr_schedule must be constant, cosine or linear, got {cfg.lr_schedule!r}")
    warm, total, floor = max(0, cfg.lr_warmup_steps), max(1, cfg.steps), cfg.lr_min_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0 - progress
        return floor + (1.0 - floor) * shape

    return factor


def build_loggers(cfg: "HiGRPOConfig") -> list[Any]:
    """Lightning Fabric loggers named by ``cfg.loggers`` (written under ``output_dir/logs``)."""
    out = []
    root = Path(cfg.output_dir) / "logs"
    for name in cfg.loggers:
        if name == "tensorboard":
            from lightning.fabric.loggers import TensorBoardLogger

            out.append(TensorBoardLogger(root_dir=str(root), name="tensorboard", version=""))
        elif name == "csv":
            from lightning.fabric.loggers import CSVLogger

            out.append(CSVLogger(root_dir=str(root), name="csv", version=""))
        elif name == "wandb":
            try:
                from wandb.integration.lightning.fabric import WandbLogger
            except ImportError as e:
                raise ValueError("loggers: wandb needs the wandb package (pip install wandb)") from e
            out.append(WandbLogger(project=cfg.wandb_project, save_dir=str(root), config=cfg.to_dict()))
        else:
            raise ValueError(f"unknown logger {name!r} (tensorboard, wandb, csv)")
    return out

