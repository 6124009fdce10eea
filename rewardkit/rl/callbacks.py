"""Callbacks of a Hi-GRPO run: what watches the training without being part of the algorithm.

A callback is any object with some of the hooks of :class:`Callback` (a hook it lacks is skipped). The
trainer calls every callback in ``trainer.callbacks`` (a list: append your own, or pass ``callbacks=[...]`` to
:class:`~rewardkit.rl.HiGRPOTrainer`) on every rank, in list order; a callback that writes files checks
``trainer.is_main``. The built-in ones (:func:`default_callbacks`), in this order:

- :class:`GuardCallback`: the reward-hacking guard (:mod:`rewardkit.rl.guards`): its ``guard/...`` metrics,
  ``guard.jsonl`` and the summary's ``guard`` entry;
- :class:`CandidateExport`: the policy's samples as candidates (:mod:`rewardkit.rl.candidates`), every
  ``candidates.every`` steps and (``candidates.eval``) the before/after evaluation samples;
- :class:`Audit`: every ``guard.audit_every`` steps, the best and worst samples of the top groups under
  ``audit/step-N/`` (meshes, ``pairs.parquet``, ``grid.png``).

What a hook may read from ``trainer``: ``cfg``, ``out`` (the output folder), ``is_main``, ``step`` (optimizer
steps taken so far), ``fabric``, ``policy``, :meth:`~rewardkit.rl.HiGRPOTrainer.term_weights` and
:meth:`~rewardkit.rl.HiGRPOTrainer.generator_name`.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any, Sequence

from rewardkit.rl.candidates import item_id_of, write_generations
from rewardkit.rl.guards import HackingGuard, audit_selection
from rewardkit.rl.records import STEPS, GroupRollout
from rewardkit.reporting.sample_grid import plot_sample_grid
from rewardkit.rl.seeds import step_seed

__all__ = ["Callback", "GuardCallback", "CandidateExport", "Audit", "default_callbacks"]

log = logging.getLogger("rewardkit.rl.trainer")


class Callback:
    """The hooks a callback may implement; each default does nothing."""

    def on_rollouts(self, trainer: Any, step: int, groups: Sequence[GroupRollout]) -> dict[str, float] | None:
        """Optimizer step ``step`` (1-based: its row in ``metrics.csv``) has sampled ``groups`` (every group this
        rank sampled, those dynamic sampling dropped included), before its update. Returned metrics join the
        step's row (averaged over devices)."""
        return None

    def on_step_end(self, trainer: Any, step: int, groups: Sequence[GroupRollout], metrics: dict[str, Any]) -> None:
        """After optimizer step ``step``'s update: ``groups`` as in :meth:`on_rollouts`, ``metrics`` the step's
        logged row (read it, do not change it)."""

    def on_evaluate(self, trainer: Any, name: str, groups: Sequence[GroupRollout], metrics: dict[str, float]) -> None:
        """After a fixed-seed evaluation (``name``: ``samples_before``, ``samples_after``) of ``groups``."""

    def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        """At the end of :meth:`~rewardkit.rl.HiGRPOTrainer.train`: add entries to ``summary`` (``metrics.json``)."""


class GuardCallback(Callback):
    """Runs :class:`~rewardkit.rl.guards.HackingGuard` on every step's samples."""

    def __init__(self, guard: HackingGuard):
        self.guard = guard

    def on_rollouts(self, trainer: Any, step: int, groups: Sequence[GroupRollout]) -> dict[str, float]:
        metrics = self.guard.update(step, groups)
        events = [e for e in self.guard.events if e["step"] == step]
        if trainer.is_main and events:
            trainer.out.mkdir(parents=True, exist_ok=True)
            with open(trainer.out / "guard.jsonl", "a") as f:
                for e in events:
                    f.write(json.dumps(e) + "\n")
        return metrics

    def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        """Per learned term: its anchors, the steps flagged and the prompts flagged."""
        out: dict[str, Any] = {}
        for key, anchors in self.guard.anchors.items():
            ev = [e for e in self.guard.events if e["term"] == key]
            out[key] = {"anchors": anchors, "flagged_steps": sorted({e["step"] for e in ev}),
                        "flagged_prompts": sorted({e["prompt"] for e in ev})}
        summary["guard"] = out


class CandidateExport(Callback):
    """The policy's samples written to ``output_dir/candidates/`` (``candidates:`` in the config)."""

    def _write(self, trainer: Any, groups: Sequence[GroupRollout], tag: str) -> None:
        res = write_generations(groups, trainer.out / "candidates", tag=tag, step=trainer.step,
                                generator=trainer.generator_name(), meshes=trainer.cfg.candidates.meshes)
        log.debug("candidates %s: %d meshes (%d samples without a surface left out)", tag, res["written"], res["empty"])

    def on_rollouts(self, trainer: Any, step: int, groups: Sequence[GroupRollout]) -> None:
        every = trainer.cfg.candidates.every
        if trainer.is_main and every and trainer.step % every == 0:
            self._write(trainer, groups, f"train-step-{trainer.step:04d}")

    def on_evaluate(self, trainer: Any, name: str, groups: Sequence[GroupRollout], metrics: dict[str, float]) -> None:
        if trainer.is_main and trainer.cfg.candidates.eval:
            self._write(trainer, groups, f"eval-step-{trainer.step:04d}")


class Audit(Callback):
    """``audit/step-N/`` every ``guard.audit_every`` optimizer steps: the ``audit_top_k`` groups with the highest
    global reward sample, each as its best and worst sample: meshes + candidates.csv, ``pairs.parquet`` (best
    vs worst, coarse and refined meshes: a pairs table for ``rewardkit annotate push``) and ``grid.png``."""

    def on_rollouts(self, trainer: Any, step: int, groups: Sequence[GroupRollout]) -> None:
        every = trainer.cfg.guard.audit_every
        if trainer.is_main and every and step % every == 0:
            self.audit(trainer, groups, step)

    def audit(self, trainer: Any, groups: Sequence[GroupRollout], n: int) -> None:
        from rewardkit.data.candidates import prompt_id_of
        from rewardkit.data.pairs import pair_id
        from rewardkit.data.tables import PAIRS_SCHEMA, write_table
        import polars as pl

        cfg = trainer.cfg
        sel = audit_selection(groups, cfg.guard.audit_top_k)
        if not sel:
            return
        d = trainer.out / "audit" / f"step-{n:04d}"
        chosen = [groups[gi] for gi, _, _ in sel]
        write_generations(chosen, d, tag="samples", step=trainer.step, generator=trainer.generator_name(),
                          samples={i: (b, w) for i, (_, b, w) in enumerate(sel)})
        rng = random.Random(step_seed(cfg.seed, n, 0, 3))
        pairs = []
        for i, (gi, b, w) in enumerate(sel):
            g = groups[gi]
            for k, step in enumerate(STEPS, start=1):
                meshes = g.steps[step].meshes
                if meshes[b] is None or meshes[w] is None:
                    continue
                x, y = item_id_of("samples", i, b, k), item_id_of("samples", i, w, k)
                a, bb = (x, y) if rng.random() < 0.5 else (y, x)
                pid = prompt_id_of(g.prompt)
                pairs.append({"pair_id": pair_id(pid, a, bb), "prompt_id": pid, "item_a": a, "item_b": bb})
        write_table(pl.DataFrame(pairs, schema=PAIRS_SCHEMA), d / "pairs.parquet", "pairs")
        if cfg.render:
            sub = [groups[gi].select([b, w]) for gi, b, w in sel]
            plot_sample_grid(sub, d / "grid.png", max_samples=2, render_size=cfg.render_size,
                             weights=trainer.term_weights(), render=True,
                             title=f"Audit of step {n}: per group its highest global-reward sample (sample 1) and its "
                                   "lowest (sample 2)")


def default_callbacks(cfg: Any, terms: dict[str, Sequence[Any]]) -> list[Callback]:
    """The built-in callbacks of a run with config ``cfg``; ``terms``: per step name its reward terms (the
    guard's learned terms and anchors). Raises ValueError on a bad ``guard`` section."""
    return [GuardCallback(HackingGuard(cfg.guard, terms)), CandidateExport(), Audit()]
