"""Rollouts of one Hi-GRPO step: two-step samples per prompt group, decoded and scored (step 1's rewards
overlapping step 2's generation), and dynamic sampling (drop groups without signal, refill)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from rewardkit.rl.hi_grpo import combine_step_rewards, group_has_signal
from rewardkit.rl.sequences import StepRollout
from rewardkit.rl.sampling import sample_two_steps

__all__ = ["RolloutMixin"]


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _step_seed(seed: int, step: int, rank: int, extra: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, rank, extra]).generate_state(1)[0])


@dataclass
class _Group:
    prompt: str
    step1: list[StepRollout]
    step2: list[StepRollout]
    meshes1: list[Any]
    meshes2: list[Any]
    r_high: np.ndarray
    r_low: np.ndarray
    terms_high: dict[str, np.ndarray]
    terms_low: dict[str, np.ndarray]  # raw term values; NaN where the term failed for that sample
    seed: int | None = None  # the seed of the rollout batch the group was sampled in
    stds_high: dict[str, np.ndarray] = field(default_factory=dict)  # std of the terms that report one
    stds_low: dict[str, np.ndarray] = field(default_factory=dict)


class RolloutMixin:
    """Sampling and scoring for :class:`~rewardkit.rl.trainer.HiGRPOTrainer` (uses its ``cfg``, ``policy``,
    ``model``, ``shape_tokenizer``, ``rewards_high``/``rewards_low``, ``prompts`` and ``fabric``)."""

    def _decode(self, steps: Sequence[StepRollout]) -> list[Any]:
        occ = self.shape_tokenizer.decode(np.stack([s.codes for s in steps]))
        return [self.shape_tokenizer.to_mesh(o) for o in occ]

    def rollout(self, prompts: Sequence[str], group_size: int, seed: int) -> list[_Group]:
        """G two-step samples for each prompt, decoded and scored."""
        cfg, G = self.cfg, group_size
        flat = [p for p in prompts for _ in range(G)]

        def score_step1(s1: Sequence[StepRollout]) -> tuple[list[Any], Any]:
            m = self._decode(s1)
            return m, self.rewards_high(m, flat)

        # overlap_rewards: step 1's decode + rewards run while step 2 generates
        submit = (lambda s1: self._reward_pool().submit(score_step1, s1)) if cfg.overlap_rewards else None
        s1, s2, fut = sample_two_steps(self.policy, self.model, flat, cfg, seed, after_step1=submit)
        if fut is not None:
            m1, rh = fut.result()
            m2 = self._decode(s2)
            rl = self._reward_pool().submit(self.rewards_low, m2, flat).result()
        else:
            m1, rh = score_step1(s1)
            m2 = self._decode(s2)
            rl = self.rewards_low(m2, flat)
        groups = []
        for g, p in enumerate(prompts):
            sl = slice(g * G, (g + 1) * G)
            groups.append(_Group(
                p, s1[sl], s2[sl], m1[sl], m2[sl], rh.total[sl], rl.total[sl],
                {k: v[sl] for k, v in rh.terms.items()}, {k: v[sl] for k, v in rl.terms.items()}, seed,
                {k: v[sl] for k, v in rh.stds.items()}, {k: v[sl] for k, v in rl.stds.items()},
            ))
        return groups

    def _setup_rollout_backend(self) -> None:
        """``rollout.backend: vllm``: a colocated vLLM engine samples both phases (rewardkit.rl.vllm_rollout);
        ``hf`` keeps Hugging Face generate on the training model."""
        rc = self.cfg.rollout
        if rc.backend != "vllm":
            return
        from rewardkit.rl.vllm_rollout import VLLMGenerator, sequence_budget

        cfg, f = self.cfg, self.fabric
        prompts = list(self.prompts) + list(cfg.eval_prompts) + list(cfg.heldout_prompts)
        longest = max(len(self.policy.encode_context(t.format(prompt=p, plan=""))) for p in prompts
                      for t in (cfg.step1_template, cfg.step2_template))
        self.policy.generator = VLLMGenerator(
            rc, self.policy, self.model, self.optimizer, cfg.policy_path, rank=f.global_rank,
            local_rank=f.local_rank, world_size=f.world_size,
            max_model_len=sequence_budget(longest, cfg.sampling.max_reasoning_tokens, cfg.tokens_per_object),
            max_num_seqs=cfg.prompts_per_step * cfg.group_size,
        )
        self.policy.synced_generation = False  # each rank's engine samples on its own

    def _reward_pool(self) -> Any:
        """One worker thread for every reward call, so a reward's thread-bound state (a GL context of a
        scorer's renderer) always lives in the same thread."""
        if getattr(self, "_pool", None) is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="rewardkit-rewards")
        return self._pool

    def _drop_reason(self, g: _Group) -> str | None:
        """Why dynamic sampling drops this group (``"flat"``: no reward spread in either step;
        ``"range"``: mean R~_high outside ``dynamic_sampling_reward_range``), or None to keep it."""
        cfg = self.cfg
        G, tol = cfg.group_size, cfg.dynamic_sampling_min_std
        rt = combine_step_rewards(torch.from_numpy(g.r_high), torch.from_numpy(g.r_low), cfg.lam)
        if not bool(group_has_signal(rt, G, tol)[0] or group_has_signal(torch.from_numpy(g.r_low), G, tol)[0]):
            return "flat"
        if cfg.dynamic_sampling_reward_range is not None:
            lo, hi = cfg.dynamic_sampling_reward_range
            vals = rt.numpy()
            mean = float(np.mean(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else math.nan
            if not lo <= mean <= hi:
                return "range"
        return None

    def _any_rank_needs(self, flag: bool) -> bool:
        """Whether any rank still needs another sampling round: one decision for all ranks (an all-reduce of
        the flag), so every rank runs the same number of rounds, and the same collectives, whatever its
        rewards (a rank's own flag alone would let one rank generate while the others wait elsewhere)."""
        if self.fabric.world_size <= 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor(int(flag), device=self.fabric.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def collect(self, step: int) -> tuple[list[_Group], dict[str, Any]]:
        """Rollouts for one optimizer step, with dynamic sampling (drop groups without reward signal or
        outside the reward range, refill with new prompts, at most ``max_sampling_rounds`` rounds). The
        ranks decide together: a new round runs on every rank while any rank still needs groups."""
        cfg = self.cfg
        kept: list[_Group] = []
        sampled: list[_Group] = []
        dropped = {"flat": 0, "range": 0}
        refilled = surplus = rounds = 0
        rng = np.random.default_rng(_step_seed(cfg.seed, step, self.fabric.global_rank, 1))
        while rounds < max(1, cfg.max_sampling_rounds) and (
                rounds == 0 or self._any_rank_needs(len(kept) < cfg.prompts_per_step)):
            # a rank whose batch is full still samples one group while another rank refills: under FSDP every
            # forward is a collective (all ranks must generate together); that group is logged, not trained on
            need = max(1, cfg.prompts_per_step - len(kept))
            n = min(need, len(self.prompts))
            prompts = [self.prompts[i] for i in rng.choice(len(self.prompts), size=n, replace=False)]
            groups = self.rollout(prompts, cfg.group_size, _step_seed(cfg.seed, step, self.fabric.global_rank, 100 + rounds))
            sampled += groups
            for g in groups:
                why = self._drop_reason(g) if cfg.dynamic_sampling else None
                if why is None and len(kept) >= cfg.prompts_per_step:
                    surplus += 1  # sampled only to keep this rank in step with a refilling one
                elif why is None:
                    kept.append(g)
                    refilled += rounds > 0
                else:
                    dropped[why] += 1
            rounds += 1
            if not cfg.dynamic_sampling:
                break
        release = getattr(self.policy.generator, "release", None)
        if release is not None:  # the vLLM engine sleeps while the policy trains
            release()
        stats = {"groups_sampled": len(sampled), "groups_kept": len(kept),
                 "groups_dropped": dropped["flat"] + dropped["range"],
                 "groups_dropped_flat": dropped["flat"], "groups_dropped_range": dropped["range"],
                 "groups_refilled": refilled, "groups_surplus": surplus, "sampling_rounds": rounds}
        return kept, {"sampled": sampled, **stats}

