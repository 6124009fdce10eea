"""Hi-GRPO's two-step sample, the one implementation used by the trainer's rollouts and by the evaluation of
a policy's generations (:mod:`rewardkit.rl.generation_eval`).

Step 1 samples a reasoning plan and a coarse object from ``step1_template``; step 2 samples the refined object
from ``step2_template``, which holds step 1's plan. Step 2 draws from ``seed + STEP2_SEED_OFFSET``, so a run's
two steps never share a random stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

STEP2_SEED_OFFSET = 7


def sample_two_steps(policy: Any, model: Any, prompts: Sequence[str], cfg: Any, seed: int, *,
                     after_step1: Callable[[list], Any] | None = None) -> tuple[list, list, Any]:
    """``(step1, step2, after)``: one two-step sample per prompt (``policy.rollout_step`` on ``model`` with
    ``cfg``'s templates and sampling; ``cfg``: a :class:`~rewardkit.rl.HiGRPOConfig`). ``after_step1(step1)``,
    when given, runs between the steps (e.g. submits step 1's scoring to overlap with step 2); ``after`` is
    what it returned."""
    s1 = policy.rollout_step(model, [cfg.step1_template.format(prompt=p) for p in prompts], cfg.sampling, seed)
    after = after_step1(s1) if after_step1 is not None else None
    ctx2 = [cfg.step2_template.format(prompt=p, plan=s.reasoning_text) for p, s in zip(prompts, s1)]
    s2 = policy.rollout_step(model, ctx2, cfg.sampling, seed + STEP2_SEED_OFFSET)
    return s1, s2, after


__all__ = ["STEP2_SEED_OFFSET", "sample_two_steps"]
