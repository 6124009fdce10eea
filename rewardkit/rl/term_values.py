"""What a reward callable takes and returns (shared by the reward terms and the scorer adapters)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

RewardFn = Callable[[Sequence[Any], Sequence[str]], Sequence[float | None]]
"""A reward term's callable: ``(meshes, prompts) -> one value per sample`` (``None``: the sample failed)."""


@dataclass
class TermValues:
    """What a reward callable may return instead of a plain list: per sample the value (``mean``) and its
    uncertainty (``std``, e.g. the spread of an ensemble's members); ``None``/NaN marks a failed sample."""

    mean: Sequence[float | None]
    std: Sequence[float | None]


__all__ = ["RewardFn", "TermValues"]
