"""Ranks of a distributed (DDP) training run: which process writes the run's outputs, and how the others
wait for it.

Lightning runs one process per device (``devices`` x ``num_nodes``, ``strategy: ddp``). They are started by
Lightning itself (its launcher re-runs the command with ``LOCAL_RANK`` / ``NODE_RANK`` set), by ``torchrun``
(``RANK``), or by a scheduler (``SLURM_PROCID``). Every rank trains; only global rank 0 evaluates, writes
``metrics.json``, the plots and the exported model. The others wait at one broadcast of rank 0's
metrics, which every rank reaches exactly once whatever the data (an error on rank 0 is broadcast too,
so no rank is left waiting for a collective the others never reach).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import lightning as L

from rewardkit.errors import RewardkitError

T = TypeVar("T")

# The launchers' variables for this process's global rank, in the order Lightning reads them.
_GLOBAL_RANK_VARS = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launched_as_rank_zero(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is (or will become) global rank 0, from its launcher's environment, before
    Lightning sets up the process group: ``RANK`` (torchrun) or ``SLURM_PROCID`` if set, else node rank
    (``NODE_RANK`` / ``GROUP_RANK``) and ``LOCAL_RANK`` both 0. A plain single-process run is rank 0."""
    env = os.environ if env is None else env
    for key in _GLOBAL_RANK_VARS:
        if env.get(key, "") != "":
            return int(env[key]) == 0
    node = env.get("NODE_RANK") or env.get("GROUP_RANK") or "0"
    return int(node) == 0 and int(env.get("LOCAL_RANK") or "0") == 0


class RankZeroError(RewardkitError, RuntimeError):
    """Rank 0 failed while evaluating or exporting; raised on the other ranks (rank 0 raises its own error)."""


def on_rank_zero(trainer: L.Trainer, work: Callable[[], T]) -> T:
    """Run ``work`` on global rank 0 only and return its result on every rank.

    The other ranks wait in one broadcast from rank 0 (a no-op in a single-process run). If ``work``
    raises, rank 0 broadcasts the error's text before re-raising, and the other ranks raise
    :class:`RankZeroError` with it: every rank takes the same collective path, whatever happens."""
    result: Any = None
    error: BaseException | None = None
    if trainer.is_global_zero:
        try:
            result = work()
        except BaseException as exc:  # broadcast to the other ranks, then re-raised below
            error = exc
        payload: tuple[str, Any] = ("error", f"{type(error).__name__}: {error}") if error else ("ok", result)
    else:
        payload = ("waiting", None)
    kind, value = trainer.strategy.broadcast(payload, src=0)
    if error is not None:
        raise error
    if kind == "error":
        raise RankZeroError(f"rank 0 failed after training (rank {trainer.global_rank} waited for it): {value}")
    return value


__all__ = ["RankZeroError", "launched_as_rank_zero", "on_rank_zero"]
