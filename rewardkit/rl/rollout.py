"""Rollouts of one Hi-GRPO step (:class:`Sampler`): two-step samples per prompt group, decoded and scored (the
global step's rewards overlapping the local step's generation), and dynamic sampling (drop groups without
signal, refill)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from rewardkit.rl.hi_grpo import combine_step_rewards, group_has_signal
from rewardkit.rl.records import GroupRollout, StepSamples
from rewardkit.rl.sampling import sample_two_steps
from rewardkit.rl.seeds import step_seed
from rewardkit.rl.sequences import StepRollout

__all__ = ["Sampler"]


class Sampler:
    """Samples and scores prompt groups for :class:`~rewardkit.rl.trainer.HiGRPOTrainer`.

    ``cfg``: the run's :class:`~rewardkit.rl.HiGRPOConfig`; ``policy``: the :class:`~rewardkit.rl.MeshPolicy`
    (its ``generator`` samples); ``model``: the trained module as Fabric set it up; ``shape_tokenizer``
    decodes codes to meshes; ``rewards``: per step name (``global``, ``local``) its
    :class:`~rewardkit.rl.StepReward`; ``prompts``: the training prompts; ``fabric``: ranks and devices."""

    def __init__(self, cfg: Any, policy: Any, model: Any, shape_tokenizer: Any, rewards: Mapping[str, Any],
                 prompts: Sequence[str], fabric: Any):
        self.cfg, self.policy, self.model, self.fabric = cfg, policy, model, fabric
        self.shape_tokenizer = shape_tokenizer
        self.rewards = dict(rewards)
        self.prompts = list(prompts)
        self._pool: Any = None

    def _decode(self, steps: Sequence[StepRollout]) -> list[Any]:
        occ = self.shape_tokenizer.decode(np.stack([s.codes for s in steps]))
        return [self.shape_tokenizer.to_mesh(o) for o in occ]

    def rollout(self, prompts: Sequence[str], group_size: int, seed: int) -> list[GroupRollout]:
        """G two-step samples for each prompt, decoded and scored."""
        cfg, G = self.cfg, group_size
        flat = [p for p in prompts for _ in range(G)]
        reward_global, reward_local = self.rewards["global"], self.rewards["local"]

        def score_global(s1: Sequence[StepRollout]) -> tuple[list[Any], Any]:
            m = self._decode(s1)
            return m, reward_global(m, flat)

        # overlap_rewards: the global step's decode + rewards run while the local step generates
        submit = (lambda s1: self.reward_pool().submit(score_global, s1)) if cfg.overlap_rewards else None
        s1, s2, fut = sample_two_steps(self.policy, self.model, flat, cfg, seed, after_step1=submit)
        if fut is not None:
            m1, r1 = fut.result()
            m2 = self._decode(s2)
            r2 = self.reward_pool().submit(reward_local, m2, flat).result()
        else:
            m1, r1 = score_global(s1)
            m2 = self._decode(s2)
            r2 = reward_local(m2, flat)
        groups = []
        for g, p in enumerate(prompts):
            sl = slice(g * G, (g + 1) * G)
            steps = {name: StepSamples(sequences=seqs[sl], meshes=meshes[sl], reward=res.total[sl],
                                       terms={k: v[sl] for k, v in res.terms.items()},
                                       term_stds={k: v[sl] for k, v in res.stds.items()})
                     for name, seqs, meshes, res in (("global", s1, m1, r1), ("local", s2, m2, r2))}
            groups.append(GroupRollout(prompt=p, steps=steps, seed=seed))
        return groups

    def setup_backend(self, optimizer: Any) -> None:
        """``rollout.backend: vllm``: a colocated vLLM engine samples both phases (rewardkit.rl.vllm_rollout),
        synced from ``model`` after every step of ``optimizer``; ``hf`` keeps Hugging Face generate on the
        training model."""
        rc = self.cfg.rollout
        if rc.backend != "vllm":
            return
        from rewardkit.rl.vllm_rollout import VLLMGenerator, sequence_budget

        cfg, f = self.cfg, self.fabric
        prompts = list(self.prompts) + list(cfg.eval_prompts) + list(cfg.heldout_prompts)
        longest = max(len(self.policy.encode_context(t.format(prompt=p, plan=""))) for p in prompts
                      for t in (cfg.step1_template, cfg.step2_template))
        self.policy.generator = VLLMGenerator(
            rc, self.policy, self.model, optimizer, cfg.policy_path, rank=f.global_rank,
            local_rank=f.local_rank, world_size=f.world_size,
            max_model_len=sequence_budget(longest, cfg.sampling.max_reasoning_tokens, cfg.tokens_per_object),
            max_num_seqs=cfg.prompts_per_step * cfg.group_size,
        )
        self.policy.synced_generation = False  # each rank's engine samples on its own

    def reward_pool(self) -> Any:
        """One worker thread for every reward call, so a reward's thread-bound state (a GL context of a
        scorer's renderer) always lives in the same thread."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="rewardkit-rewards")
        return self._pool

    def drop_reason(self, g: GroupRollout) -> str | None:
        """Why dynamic sampling drops this group (``"flat"``: no reward spread in either step;
        ``"range"``: mean R~_global outside ``dynamic_sampling_reward_range``), or None to keep it."""
        cfg = self.cfg
        G, tol = cfg.group_size, cfg.dynamic_sampling_min_std
        r_local = torch.from_numpy(g.steps["local"].reward)
        rt = combine_step_rewards(torch.from_numpy(g.steps["global"].reward), r_local, cfg.lam)
        if not bool(group_has_signal(rt, G, tol)[0] or group_has_signal(r_local, G, tol)[0]):
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

    def collect(self, step: int) -> tuple[list[GroupRollout], dict[str, Any]]:
        """Rollouts for one optimizer step, with dynamic sampling (drop groups without reward signal or
        outside the reward range, refill with new prompts, at most ``max_sampling_rounds`` rounds). The
        ranks decide together: a new round runs on every rank while any rank still needs groups."""
        cfg = self.cfg
        kept: list[GroupRollout] = []
        sampled: list[GroupRollout] = []
        dropped = {"flat": 0, "range": 0}
        refilled = surplus = rounds = 0
        rng = np.random.default_rng(step_seed(cfg.seed, step, self.fabric.global_rank, 1))
        while rounds < max(1, cfg.max_sampling_rounds) and (
                rounds == 0 or self._any_rank_needs(len(kept) < cfg.prompts_per_step)):
            # a rank whose batch is full still samples one group while another rank refills: under FSDP every
            # forward is a collective (all ranks must generate together); that group is logged, not trained on
            need = max(1, cfg.prompts_per_step - len(kept))
            n = min(need, len(self.prompts))
            prompts = [self.prompts[i] for i in rng.choice(len(self.prompts), size=n, replace=False)]
            groups = self.rollout(prompts, cfg.group_size, step_seed(cfg.seed, step, self.fabric.global_rank, 100 + rounds))
            sampled += groups
            for g in groups:
                why = self.drop_reason(g) if cfg.dynamic_sampling else None
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
