"""Training progress on stderr: Lightning's bar on a terminal, one line per epoch in a log.

``TrainConfig.progress_bar`` picks the display: ``"auto"`` (or ``true``) is the bar when stderr is a
terminal and :class:`EpochLines` otherwise (a log file, ``dvc repro``, CI: bar frames would be noise);
``"bar"`` / ``"lines"`` force one of them; ``false`` shows neither.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning as L

from rewardkit.progress import is_terminal


def progress_mode(setting: Any, stream: TextIO | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for a ``progress_bar`` setting (see the module docstring)."""
    if setting is False or setting in ("off", "none"):
        return "off"
    if setting in ("bar", "lines"):
        return str(setting)
    return "bar" if is_terminal(stream) else "lines"


def _num(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if v is None:
        return None
    v = float(v.item() if hasattr(v, "item") else v)
    return None if math.isnan(v) else v


class EpochLines(L.Callback):
    """One line per training epoch on ``stream`` (default: stderr), from the main process:
    ``epoch 3/8: train loss 0.612, val loss 0.548, val pairwise accuracy 0.812, 12.3 s``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.t0 = time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # validation of this epoch has run by now (Lightning runs it before on_train_epoch_end)
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = dict(trainer.callback_metrics)
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = []
        for label, key, fmt in (("train loss", "train/loss_epoch", ".4f"), ("val loss", "val/bt_loss", ".4f"),
                                ("val pairwise accuracy", "val/pairwise_accuracy", ".3f")):
            v = _num(m, key)
            if v is not None:
                parts.append(f"{label} {v:{fmt}}")
        parts.append(f"{time.perf_counter() - self.t0:.1f} s")
        epoch = f"epoch {trainer.current_epoch + 1}" + (f"/{total}" if total else "")
        print(f"{epoch}: {', '.join(parts)} (step {trainer.global_step})", file=self.stream or sys.stderr, flush=True)


__all__ = ["EpochLines", "progress_mode"]
