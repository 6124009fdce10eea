"""One Hi-GRPO optimizer update (:class:`Updater`): group advantages of both steps, reference log-probs (frozen
copy, CPU copy or adapter-disabled base), the clipped token-level loss over micro-batches, ``mu`` updates."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from rewardkit.rl.hi_grpo import clipped_token_loss, combine_step_rewards, group_advantages
from rewardkit.rl.records import STEPS, GroupRollout
from rewardkit.rl.sequences import RolloutBatch

__all__ = ["Updater"]


class Updater:
    """The loss and optimizer step of :class:`~rewardkit.rl.trainer.HiGRPOTrainer`.

    ``cfg``: the run's config; ``policy``: the :class:`~rewardkit.rl.MeshPolicy` (log-probs, vocabulary);
    ``model``/``optimizer``: as Fabric set them up; ``fabric``: devices and collectives; ``sharded``: FSDP
    (a reduce-scatter per micro-batch); ``reference_mode``: ``copy``, ``cpu``, ``adapter`` or None (``beta``
    0: no KL) and ``ref_model`` the frozen copy of the first two."""

    def __init__(self, cfg: Any, policy: Any, model: Any, optimizer: Any, fabric: Any, *, sharded: bool,
                 reference_mode: str | None, ref_model: Any = None):
        self.cfg, self.policy, self.model, self.optimizer, self.fabric = cfg, policy, model, optimizer, fabric
        self.sharded, self.reference_mode, self.ref_model = sharded, reference_mode, ref_model

    def advantages(self, groups: Sequence[GroupRollout]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(advantages, valid)``, each ``[2, N]`` (row 0 the global step, row 1 the local step; N = all
        samples, group by group): A from R~_global = R_global + lam R_local and from R_local; valid 0 where the
        step's reward failed."""
        G = self.cfg.group_size
        rg = torch.from_numpy(np.concatenate([g.steps["global"].reward for g in groups]))
        rl = torch.from_numpy(np.concatenate([g.steps["local"].reward for g in groups]))
        a1 = group_advantages(combine_step_rewards(rg, rl, self.cfg.lam), G, self.cfg.adv_eps)
        a2 = group_advantages(rl, G, self.cfg.adv_eps)
        # samples whose reward failed (NaN) train on nothing in that step
        valid1 = torch.isfinite(combine_step_rewards(rg, rl, self.cfg.lam)).float()
        valid2 = torch.isfinite(rl).float()
        return torch.stack([a1.float(), a2.float()]), torch.stack([valid1, valid2])

    def ref_logprobs(self, batches: list[RolloutBatch]) -> list[torch.Tensor | None]:
        """Log-probs of the KL reference: a frozen copy (device or CPU) or the adapter-disabled base."""
        if self.reference_mode is None:
            return [None] * len(batches)
        s = self.cfg.sampling
        with torch.no_grad(), self.fabric.autocast():
            if self.reference_mode == "adapter":
                with getattr(self.model, "module", self.model).disable_adapter():
                    return [self.policy.logprobs(self.model, b, s) for b in batches]
            if self.reference_mode == "cpu":
                return [self.policy.logprobs(self.ref_model, b.to("cpu"), s).to(self.fabric.device) for b in batches]
            return [self.policy.logprobs(self.ref_model, b, s) for b in batches]

    def optimize(self, groups: Sequence[GroupRollout]) -> dict[str, float]:
        """``mu`` optimizer steps of L = L_global + L_local on ``groups``; returns the step's metrics
        (``global/loss``, ``local/kl``, ..., ``loss``, ``grad_norm``, ``global/tokens``)."""
        cfg, fabric = self.cfg, self.fabric
        adv, valid = self.advantages(groups)
        mb = max(1, cfg.micro_batch_size)
        step_data = []
        for k, name in enumerate(STEPS):
            seqs = [s for g in groups for s in g.steps[name].sequences]
            batches, advs = [], []
            for i in range(0, len(seqs), mb):
                b = RolloutBatch.collate(seqs[i : i + mb], self.policy.vocab.pad_id)
                b.mask = b.mask * valid[k, i : i + mb, None]
                batches.append(b.to(fabric.device))
                advs.append(adv[k, i : i + mb].to(fabric.device))
            # the normalizers of the token-level and the per-sequence aggregation, over all micro-batches and devices
            counts = torch.tensor([float(sum(b.mask.sum() for b in batches)),
                                   float(sum((b.mask.sum(1) > 0).sum() for b in batches))], device=fabric.device)
            counts = fabric.all_reduce(counts, reduce_op="sum") if fabric.world_size > 1 else counts
            step_data.append((batches, advs, self.ref_logprobs(batches), counts[0], counts[1]))
        old: dict[tuple[int, int], torch.Tensor] = {}
        metrics: dict[str, list[float]] = {}
        micro = [(k, j) for k, (batches, *_rest) in enumerate(step_data) for j in range(len(batches))]
        for epoch in range(max(1, cfg.mu)):
            self.optimizer.zero_grad(set_to_none=True)
            for idx, (k, j) in enumerate(micro):
                batches, advs, refs, n_tok, n_seq = step_data[k]
                b, a, ref = batches[j], advs[j], refs[j]
                # DDP: one gradient all-reduce per update, however many micro-batches a device has. FSDP: a
                # reduce-scatter after every micro-batch, so gradients accumulate sharded (4 T / W bytes); skipping
                # it would hold unsharded fp32 gradients (4 T bytes) between micro-batches (docs/hi-grpo.md)
                with fabric.no_backward_sync(self.model, enabled=idx < len(micro) - 1 and not self.sharded):
                    if epoch == 0:
                        lp, ent = self.policy.logprobs(self.model, b, cfg.sampling, return_entropy=True)
                        tok = float(b.mask.sum())
                        metrics.setdefault(f"{STEPS[k]}/entropy", []).append((float(ent.sum()), tok))
                    else:
                        lp = self.policy.logprobs(self.model, b, cfg.sampling)
                    out = clipped_token_loss(
                        lp, old.get((k, j)), ref, a, b.mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                        beta=cfg.beta, num_tokens=n_tok, aggregation=cfg.loss_aggregation,
                        ratio_level=cfg.importance_sampling_level, num_sequences=n_seq,
                    )
                    fabric.backward(out.loss * fabric.world_size)
                if epoch == 0 and cfg.mu > 1:
                    old[(k, j)] = lp.detach()
                w = float(out.num_tokens)
                for name in ("kl", "clip_low_frac", "clip_high_frac", "ratio_mean"):
                    metrics.setdefault(f"{STEPS[k]}/{name}", []).append((float(getattr(out, name)) * w, w))
                metrics.setdefault(f"{STEPS[k]}/clip_frac", []).append(
                    ((float(out.clip_low_frac) + float(out.clip_high_frac)) * w, w))
                metrics.setdefault(f"{STEPS[k]}/loss", []).append((float(out.loss.detach()), 1.0))
            grad_norm = fabric.clip_gradients(self.model, self.optimizer, max_norm=cfg.max_grad_norm) if cfg.max_grad_norm else None
            self.optimizer.step()
            if grad_norm is not None:
                metrics.setdefault("grad_norm", []).append((float(grad_norm), 1.0))
        result = {}
        for name, vals in metrics.items():
            if name.endswith("/loss"):  # summed over micro-batches, averaged over the mu epochs
                result[name] = sum(v for v, _ in vals) / max(1, cfg.mu)
            else:
                tot = sum(w for _, w in vals)
                result[name] = sum(v for v, _ in vals) / tot if tot else 0.0
        result["loss"] = result.get("global/loss", 0.0) + result.get("local/loss", 0.0)
        for k, name in enumerate(STEPS):
            result[f"{name}/tokens"] = float(step_data[k][3])
        return result

