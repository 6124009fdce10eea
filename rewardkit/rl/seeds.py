"""Seeds of a Hi-GRPO run: one derived seed per (run seed, optimizer step, rank, purpose), so every rollout,
evaluation and audit draw is reproducible and no two of them share a random stream."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["step_seed", "seed_everything"]


def step_seed(seed: int, step: int, rank: int, extra: int = 0) -> int:
    """The seed of one draw: a hash of the run's ``seed``, the optimizer ``step`` (or a fixed stand-in for
    evaluations), the device's ``rank`` and ``extra`` (which draw of the step: prompts, a sampling round, ...)."""
    return int(np.random.SeedSequence([seed, step, rank, extra]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
