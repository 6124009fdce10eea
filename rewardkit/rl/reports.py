"""What a Hi-GRPO run reports: per-step reward metrics (every term's mean and within-group std), the
metrics log (jsonl + csv), fixed-seed evaluations with renders, held-out evaluation, the summary and plot;
and what closes the loop: the policy's samples as candidates (:mod:`rewardkit.rl.candidates`), the
reward-hacking guard's metrics and flags and the audit of each step's best samples
(:mod:`rewardkit.rl.guards`)."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rewardkit.rl.candidates import item_id_of, write_generations
from rewardkit.rl.guards import audit_selection
from rewardkit.rl.sequences import PHASE_TEXT
from rewardkit.rl.rewards import group_stats
from rewardkit.rl.rollout import _Group, _step_seed
from rewardkit.reporting.sample_grid import plot_sample_grid, sample_cells

__all__ = ["ReportsMixin"]

log = logging.getLogger("rewardkit.rl.trainer")


class ReportsMixin:
    """Metrics, logs, evaluations and plots of :class:`~rewardkit.rl.trainer.HiGRPOTrainer`."""

    def _reward_metrics(self, groups: Sequence[_Group]) -> dict[str, float]:
        G = len(groups[0].r_high) if groups else self.cfg.group_size
        out: dict[str, float] = {}
        if not groups:
            return out
        rh = np.concatenate([g.r_high for g in groups])
        rl = np.concatenate([g.r_low for g in groups])
        for name, v in (("r_high", rh), ("r_low", rl), ("r_high_tilde", rh + self.cfg.lam * rl)):
            out[name], out[f"{name}_group_std"] = group_stats(v, G)
        for step, attr in (("high", "terms_high"), ("low", "terms_low")):
            for term in getattr(groups[0], attr):
                v = np.concatenate([getattr(g, attr)[term] for g in groups])
                out[f"{step}/{term}"], out[f"{step}/{term}_group_std"] = group_stats(v, G)
                if np.isnan(v).any():
                    out[f"failed/{step}/{term}"] = float(np.isnan(v).sum())
            stds = getattr(groups[0], f"stds_{step}", {})
            for term in stds:  # a term that reports a std (an ensemble's spread): its batch mean
                v = np.concatenate([getattr(g, f"stds_{step}")[term] for g in groups])
                out[f"{step}/{term}_uncertainty"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
        out["reasoning_tokens/step1"] = float(np.mean([sum(1 for p in s.phases if p == PHASE_TEXT) for g in groups for s in g.step1]))
        out["reasoning_tokens/step2"] = float(np.mean([sum(1 for p in s.phases if p == PHASE_TEXT) for g in groups for s in g.step2]))
        out["empty_meshes"] = float(sum(m is None for g in groups for m in g.meshes1 + g.meshes2))
        return out

    def _gather_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average each metric over the devices that have it (key sets can differ, e.g. failures)."""
        if self.fabric.world_size == 1:
            return metrics
        import torch.distributed as dist

        gathered: list[dict[str, float] | None] = [None] * self.fabric.world_size
        dist.all_gather_object(gathered, metrics)
        keys = sorted({k for g in gathered for k in g})
        return {k: float(np.mean([g[k] for g in gathered if k in g])) for k in keys}

    @torch.no_grad()
    def evaluate_heldout(self) -> dict[str, float]:
        """Fixed-seed samples of ``heldout_prompts`` (never trained on): their reward metrics as heldout/*."""
        cfg = self.cfg
        groups = self.rollout(cfg.heldout_prompts, cfg.heldout_group_size,
                              _step_seed(cfg.seed, 2 * 10**6, self.fabric.global_rank))
        return {f"heldout/{k}": v for k, v in self._gather_mean(self._reward_metrics(groups)).items()}

    @torch.no_grad()
    def evaluate(self, name: str) -> dict[str, float]:
        """Fixed-seed samples of the eval prompts: mean rewards, plus renders and a JSON of samples."""
        cfg = self.cfg
        prompts = cfg.eval_prompts or self.prompts[:6]
        groups = self.rollout(prompts, cfg.eval_group_size, _step_seed(cfg.seed, 10**6, self.fabric.global_rank))
        metrics = self._reward_metrics(groups)
        metrics = self._gather_mean(metrics)
        if self.is_main:
            d = self.out / name
            d.mkdir(parents=True, exist_ok=True)
            rows = []
            for gi, g in enumerate(groups):
                for k in range(2):
                    m = (g.meshes1 if k == 0 else g.meshes2)[0]
                    if m is not None:
                        m.export(d / f"{gi:02d}_step{k + 1}.ply")
                rows.append({
                    "prompt": g.prompt, "plan": g.step1[0].reasoning_text, "detail": g.step2[0].reasoning_text,
                    "r_high": float(g.r_high[0]), "r_low": float(g.r_low[0]),
                })
            grid = sample_cells(groups, 4, self._term_weights())
            per_prompt = [{"prompt": g.prompt, **self._reward_metrics([g])} for g in groups]
            (d / "samples.json").write_text(json.dumps({"metrics": metrics, "samples": rows, "grid": grid,
                                                        "per_prompt": per_prompt}, indent=2))
            if cfg.candidates.eval:
                self._write_candidates(groups, f"eval-step-{self.step:04d}")
            if cfg.render:
                when = {"samples_before": "before training", "samples_after": f"after {self.step} steps"}.get(name, name)
                self._render(groups, d / "renders.png",
                             title=f"Hi-GRPO samples {when}: mean R_high {metrics.get('r_high', math.nan):+.2f}, "
                                   f"mean R_low {metrics.get('r_low', math.nan):+.2f} (fixed seed)")
        return metrics

    # -- closing the loop: candidates, guard, audit -------------------------------------------------
    def _generator(self) -> str:
        """The policy that sampled this step's rollouts: the start checkpoint after ``self.step`` updates."""
        return f"{self.cfg.policy_path}@step-{self.step}"

    def _write_candidates(self, groups: Sequence[_Group], tag: str) -> None:
        res = write_generations(groups, self.out / "candidates", tag=tag, step=self.step, generator=self._generator(),
                                meshes=self.cfg.candidates.meshes)
        log.debug("candidates %s: %d meshes (%d samples without a surface left out)", tag, res["written"], res["empty"])

    def _loop_step(self, sampled: Sequence[_Group]) -> dict[str, float]:
        """Before the update of optimizer step ``self.step + 1``: the guard's metrics on what the policy
        sampled, and (rank 0) the step's candidates and audit."""
        cfg = self.cfg
        n = self.step + 1  # the optimizer step these rollouts train (its row in metrics.csv)
        metrics = self.guard.update(n, sampled)
        if self.is_main:
            if self.guard.events and self.guard.events[-1]["step"] == n:
                self.out.mkdir(parents=True, exist_ok=True)
                with open(self.out / "guard.jsonl", "a") as f:
                    for e in self.guard.events:
                        if e["step"] == n:
                            f.write(json.dumps(e) + "\n")
            if cfg.candidates.every and self.step % cfg.candidates.every == 0:
                self._write_candidates(sampled, f"train-step-{self.step:04d}")
            if cfg.guard.audit_every and n % cfg.guard.audit_every == 0:
                self._audit(sampled, n)
        return metrics

    def _audit(self, groups: Sequence[_Group], n: int) -> None:
        """``audit/step-N/``: the ``audit_top_k`` groups with the highest R_high sample, each as its best and
        worst sample: meshes + candidates.csv, ``pairs.parquet`` (best vs worst, coarse and refined meshes:
        a pairs table for ``rewardkit annotate push``) and ``grid.png``."""
        from rewardkit.data.candidates import prompt_id_of
        from rewardkit.data.pairs import pair_id
        from rewardkit.data.tables import PAIRS_SCHEMA, write_table
        import polars as pl

        sel = audit_selection(groups, self.cfg.guard.audit_top_k)
        if not sel:
            return
        d = self.out / "audit" / f"step-{n:04d}"
        chosen = [groups[gi] for gi, _, _ in sel]
        write_generations(chosen, d, tag="samples", step=self.step, generator=self._generator(),
                          samples={i: (b, w) for i, (_, b, w) in enumerate(sel)})
        rng = random.Random(_step_seed(self.cfg.seed, n, 0, 3))
        pairs = []
        for i, (gi, b, w) in enumerate(sel):
            g = groups[gi]
            for k, meshes in ((1, g.meshes1), (2, g.meshes2)):
                if meshes[b] is None or meshes[w] is None:
                    continue
                x, y = item_id_of("samples", i, b, k), item_id_of("samples", i, w, k)
                a, bb = (x, y) if rng.random() < 0.5 else (y, x)
                pid = prompt_id_of(g.prompt)
                pairs.append({"pair_id": pair_id(pid, a, bb), "prompt_id": pid, "item_a": a, "item_b": bb})
        write_table(pl.DataFrame(pairs, schema=PAIRS_SCHEMA), d / "pairs.parquet", "pairs")
        if self.cfg.render:
            sub = [_subgroup(groups[gi], [b, w]) for gi, b, w in sel]
            plot_sample_grid(sub, d / "grid.png", max_samples=2, render_size=self.cfg.render_size,
                             weights=self._term_weights(), render=True,
                             title=f"Audit of step {n}: per group its highest-R_high sample (sample 1) and its lowest (sample 2)")

    def _render(self, groups: Sequence[_Group], path: Path, title: str = "") -> dict:
        """The sample grid (:mod:`rewardkit.reporting.sample_grid`): per eval prompt, its first samples' step-1 and
        step-2 meshes with their rewards and reward terms."""
        return plot_sample_grid(groups, path, max_samples=4, render_size=self.cfg.render_size,
                                weights=self._term_weights(), title=title, render=True)

    def _term_weights(self) -> dict[str, dict[str, float]]:
        return {step: {t.name: t.weight for t in getattr(rew, "terms", [])}
                for step, rew in (("high", self.rewards_high), ("low", self.rewards_low))}

    def _write_logs(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(self.records[-1]) + "\n")
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.records)

    def _summary(self) -> dict[str, Any]:
        recs = [r for r in self.records if "r_high" in r]
        if not recs:
            return {}
        k = max(1, min(5, len(recs) // 4))
        first = {n: float(np.mean([r[n] for r in recs[:k]])) for n in ("r_high", "r_low")}
        last = {n: float(np.mean([r[n] for r in recs[-k:]])) for n in ("r_high", "r_low")}
        return {
            "steps": self.step,
            "window": k,
            "r_high_first": first["r_high"], "r_high_last": last["r_high"],
            "r_low_first": first["r_low"], "r_low_last": last["r_low"],
            "r_high_rose": last["r_high"] > first["r_high"], "r_low_rose": last["r_low"] > first["r_low"],
        }

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recs = [r for r in self.records if "r_high" in r]
        if not recs:
            return
        steps = [r["step"] for r in recs]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for ax, name, title in ((axes[0], "r_high", "R_high (step 1, global)"), (axes[1], "r_low", "R_low (step 2, local)")):
            y = np.array([r[name] for r in recs])
            s = np.array([r.get(f"{name}_group_std", 0.0) for r in recs])
            ax.plot(steps, y, label="batch mean")
            ax.fill_between(steps, y - s, y + s, alpha=0.2, label="± within-group std")
            if len(y) >= 5:
                kern = np.ones(5) / 5
                ax.plot(steps[2:-2], np.convolve(y, kern, mode="valid"), label="5-step mean")
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.out / "reward_curve.png", dpi=100)
        plt.close(fig)

    def _guard_summary(self) -> dict[str, Any]:
        """Per learned term: its anchors, the steps flagged and the prompts flagged (``metrics.json``)."""
        out: dict[str, Any] = {}
        for key, anchors in self.guard.anchors.items():
            ev = [e for e in self.guard.events if e["term"] == key]
            out[key] = {"anchors": anchors, "flagged_steps": sorted({e["step"] for e in ev}),
                        "flagged_prompts": sorted({e["prompt"] for e in ev})}
        return out

    def _local_parameter_fraction(self) -> float:
        """Share of the policy's parameter elements held by this rank (1.0 unsharded, ~1/N under FSDP)."""
        local = full = 0
        for p in self.model.parameters():
            full += p.numel()
            local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        return local / max(1, full)



def _subgroup(g: _Group, idx: Sequence[int]) -> _Group:
    """The samples ``idx`` of a group, in that order (every per-sample field sliced)."""
    idx = list(idx)
    return dataclasses.replace(
        g, step1=[g.step1[i] for i in idx], step2=[g.step2[i] for i in idx], meshes1=[g.meshes1[i] for i in idx],
        meshes2=[g.meshes2[i] for i in idx], r_high=g.r_high[idx], r_low=g.r_low[idx],
        terms_high={k: v[idx] for k, v in g.terms_high.items()}, terms_low={k: v[idx] for k, v in g.terms_low.items()},
        stds_high={k: v[idx] for k, v in g.stds_high.items()}, stds_low={k: v[idx] for k, v in g.stds_low.items()},
    )
