"""Hi-GRPO for autoregressive text-to-3D policies, rewarded by rewardkit scorers.

- :mod:`rewardkit.rl.hi_grpo`     the math: advantages, clipped token-level loss, k3 KL, dynamic sampling rule
- :mod:`rewardkit.rl.policy`      Hugging Face causal LMs with ShapeLLM-Omni mesh tokens: two-phase sampling;
  the token convention and step records in :mod:`~rewardkit.rl.sequences`, log-probs in :mod:`~rewardkit.rl.logprobs`
- :mod:`rewardkit.rl.tokenizers`  shape tokenizers (tokens <-> occupancy -> mesh): voxel blocks, ShapeLLM-Omni VQVAE
- :mod:`rewardkit.rl.rewards`     weighted reward terms per step over ``fn(meshes, prompts) -> list[float]``
- :mod:`rewardkit.rl.config`      :class:`HiGRPOConfig` (every field commented), :func:`load_config`
- :mod:`rewardkit.rl.records`     :class:`GroupRollout`, the record of one prompt group's two-step samples
  (per step, ``"global"`` and ``"local"``, a :class:`StepSamples`)
- :mod:`rewardkit.rl.trainer`     :class:`HiGRPOTrainer` (Lightning Fabric), with the collaborators
  :class:`~rewardkit.rl.rollout.Sampler`, :class:`~rewardkit.rl.update.Updater`,
  :class:`~rewardkit.rl.checkpoint.Checkpointer`, :class:`~rewardkit.rl.reports.MetricsLog` (+
  :mod:`~rewardkit.reporting.sample_grid`) and the :class:`Callback` s of :mod:`~rewardkit.rl.callbacks` (guard,
  candidates, audit); seeds in :mod:`~rewardkit.rl.seeds`; devices in :mod:`~rewardkit.rl.engine` and :mod:`~rewardkit.rl.sharding`;
  :mod:`~rewardkit.rl.freezing`, :mod:`~rewardkit.rl.lora`; the demo's :mod:`~rewardkit.rl.warm_start`

Heavy modules are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "HiGRPOConfig": "rewardkit.rl.config",
    "HiGRPOTrainer": "rewardkit.rl.trainer",
    "GroupRollout": "rewardkit.rl.records",
    "StepSamples": "rewardkit.rl.records",
    "Callback": "rewardkit.rl.callbacks",
    "WarmStartConfig": "rewardkit.rl.config",
    "load_config": "rewardkit.rl.config",
    "MeshPolicy": "rewardkit.rl.policy",
    "SamplingConfig": "rewardkit.rl.policy",
    "build_tiny_policy": "rewardkit.rl.policy",
    "RewardTerm": "rewardkit.rl.rewards",
    "RewardTermConfig": "rewardkit.rl.rewards",
    "StepReward": "rewardkit.rl.rewards",
    "RewardError": "rewardkit.rl.rewards",
    "create_tokenizer": "rewardkit.rl.tokenizers",
    "ShapeTokenizerConfig": "rewardkit.rl.tokenizers",
    "VoxelBlockTokenizer": "rewardkit.rl.tokenizers",
    "VQVAETokenizer": "rewardkit.rl.tokenizers",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - the names of the lazy attribute table below


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rewardkit.rl' has no attribute {name!r}")
