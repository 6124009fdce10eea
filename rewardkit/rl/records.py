"""The record of one Hi-GRPO prompt group: :class:`GroupRollout`, one per prompt and rollout batch.

A Hi-GRPO step samples G two-step samples per prompt. Step ``"global"`` (step 1) samples a semantic plan and a
coarse mesh, rewarded by the ``rewards_global`` terms (R_high in the paper); step ``"local"`` (step 2) samples the
visual detail and a refined mesh, rewarded by the ``rewards_local`` terms (R_low). A :class:`GroupRollout` holds
one prompt's G samples: per step (:data:`STEPS`) a :class:`StepSamples` with the sampled sequences, the decoded
meshes, the step's reward and every reward term's raw value. The rollout builds it
(:meth:`rewardkit.rl.rollout.Sampler.rollout`); the update, the reports, the guard, the audit and the candidate
export read it; a callback (:mod:`rewardkit.rl.callbacks`) gets the step's records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["STEPS", "StepSamples", "GroupRollout"]

STEPS = ("global", "local")
"""The two Hi-GRPO steps, in order: ``global`` (step 1, coarse shape) and ``local`` (step 2, refinement). The
same names prefix the run's metric keys (``global/loss``, ``local/<term>``, ``guard/global/<term>/flag``)."""


@dataclass
class StepSamples:
    """One Hi-GRPO step's G samples of one prompt (G = ``group_size``), sample ``i`` at index ``i`` of every
    field."""

    sequences: list[Any]
    """The G sampled sequences (:class:`rewardkit.rl.sequences.StepRollout`: context, reasoning and mesh token
    ids, phases, action mask, mesh codes, reasoning text). Empty in records built without a policy (plots)."""
    meshes: list[Any]
    """The G decoded meshes (``trimesh.Trimesh``, in the shape tokenizer's unit cube), None where the codes
    decoded to no surface."""
    reward: np.ndarray
    """``[G]`` float64: the step's reward, ``Σ weight·value/dims`` over its terms; NaN where a term failed
    (``reward_on_error: mark``)."""
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    """Term name -> ``[G]`` float64 raw values (before weight and dims); NaN where the term failed."""
    term_stds: dict[str, np.ndarray] = field(default_factory=dict)
    """Term name -> ``[G]`` float64 std of the terms that report one (an ensemble's spread), same units as the
    term; only those terms appear."""

    def select(self, idx: Sequence[int]) -> StepSamples:
        """The samples ``idx``, in that order (every per-sample field sliced)."""
        idx = list(idx)
        return StepSamples(
            sequences=[self.sequences[i] for i in idx] if self.sequences else [],
            meshes=[self.meshes[i] for i in idx], reward=np.asarray(self.reward)[idx],
            terms={k: np.asarray(v)[idx] for k, v in self.terms.items()},
            term_stds={k: np.asarray(v)[idx] for k, v in self.term_stds.items()})


@dataclass
class GroupRollout:
    """One prompt's G two-step samples from one rollout batch: the record every part of the trainer shares."""

    prompt: str
    """The training (or evaluation) prompt, as given; the templates' ``{prompt}``."""
    steps: dict[str, StepSamples]
    """Step name -> its samples: exactly the keys of :data:`STEPS`, ``"global"`` then ``"local"``. The local
    step's sample ``i`` was conditioned on the global step's sample ``i`` (its plan)."""
    seed: int | None = None
    """The seed of the rollout batch the group was sampled in (the same policy, batch and seed resample it);
    None when unknown."""

    def __post_init__(self) -> None:
        if tuple(self.steps) != STEPS:
            raise ValueError(f"GroupRollout.steps must have the keys {STEPS} in order, got {tuple(self.steps)}")

    @property
    def group_size(self) -> int:
        """G, the number of samples."""
        return len(self.steps["global"].reward)

    def select(self, idx: Sequence[int]) -> GroupRollout:
        """The samples ``idx`` of this group, in that order, in both steps."""
        return GroupRollout(prompt=self.prompt, steps={k: s.select(idx) for k, s in self.steps.items()},
                            seed=self.seed)
