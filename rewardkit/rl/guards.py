"""Reward-hacking guards for a Hi-GRPO run: learned reward terms watched against the step's other terms.

A *learned* term (a scorer or service term, or one marked ``learned: true``) can be gamed: the policy finds
shapes the reward model overrates. Its *anchors* are the other terms of the same Hi-GRPO step that are not
learned (``guard.anchors`` names them explicitly), e.g. the occupancy IoU next to the global scorer. Per
optimizer step and per learned term :class:`HackingGuard` reports

- ``guard/<step>/<term>/agreement``: the Spearman rank correlation, within each prompt group, between the
  term and its anchors' contribution to the reward (``Σ weight·value/dims``), averaged over the groups
  where both vary (NaN when none does). A learned term that orders a group's samples against the anchors
  is a warning sign even before the means move.
- ``guard/<step>/<term>/flag`` (0/1) and ``guard/<step>/<term>/flagged_prompts``: the term *rose* while its
  anchors *fell*: over the last ``window`` appearances of a prompt (and of the whole batch) compared with
  the ``window`` before, the term's mean went up by more than ``min_change`` of its within-group std and
  the anchors' contribution went down by more than ``min_change`` of theirs. Each flag is logged as a
  warning naming the prompt and the two changes, and kept in :attr:`HackingGuard.events`.
- where the term reports a std (an ensemble's spread, :class:`rewardkit.rl.rewards.TermValues`; logged by
  the trainer as ``<step>/<term>_uncertainty``), the flag also fires (reason ``uncertainty``) when the
  batch mean of that std over the last ``window`` steps exceeds ``std_jump`` times its mean over the first
  ``window`` steps: the policy left the data the reward model knows.

The audit (:func:`audit_selection`) picks each step's highest-reward samples for a human to check.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["GuardConfig", "HackingGuard", "spearman", "group_agreement", "audit_selection"]

log = logging.getLogger("rewardkit.rl.guards")

BATCH = "(batch)"  # the pseudo-prompt under which the guard follows the whole batch


@dataclass
class GuardConfig:
    """The reward-hacking guard of a Hi-GRPO run (``guard:`` in the config)."""

    enabled: bool = True
    # learned terms to watch as "<step>/<term>" (step global or local); None: the terms marked learned
    # (scorer and url terms, or any term with ``learned: true``)
    learned: list[str] | None = None
    # "<step>/<term>" -> its anchors ("<step>/<term>" of the same step); unset: the step's other terms that
    # are not learned (or, if every other term is learned, all of them)
    anchors: dict[str, list[str]] | None = None
    window: int = 4  # appearances per window: the last `window` of a prompt against the `window` before
    min_change: float = 0.25  # a rise / fall bigger than this many within-group stds of the series
    std_jump: float = 2.0  # uncertainty flag: last window's mean std above std_jump x the first window's
    # the audit: every N optimizer steps (0: never), the `audit_top_k` groups with the highest global-reward
    # sample, each as its best and its worst sample: a grid PNG (with ``render``), the meshes as candidates
    # and the best-vs-worst pairs (pairs table) under output_dir/audit/step-N/
    audit_every: int = 0
    audit_top_k: int = 4


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata's default)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation over the pairs where both are finite; NaN with fewer than 3 such pairs or
    when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3:
        return math.nan
    ra, rb = _rank(a), _rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def group_agreement(groups_a: Sequence[Sequence[float]], groups_b: Sequence[Sequence[float]]) -> float:
    """Mean over groups of :func:`spearman` (groups where it is defined); NaN if it is defined in none."""
    vals = [r for a, b in zip(groups_a, groups_b) if math.isfinite(r := spearman(a, b))]
    return float(np.mean(vals)) if vals else math.nan


def _key(step: str, term: str) -> str:
    return f"{step}/{term}"


class HackingGuard:
    """Follows learned reward terms step by step (see the module docstring). ``terms``: per Hi-GRPO step
    (``global``, ``local``) its :class:`~rewardkit.rl.rewards.RewardTerm` s (names, weights, dims, learned)."""

    def __init__(self, config: GuardConfig, terms: Mapping[str, Sequence[Any]]):
        self.cfg = config
        if config.window < 1:
            raise ValueError(f"guard.window must be >= 1, got {config.window}")
        self.terms = {step: {t.name: t for t in ts} for step, ts in terms.items()}
        known = {_key(s, n) for s, ts in self.terms.items() for n in ts}
        if config.learned is not None:
            bad = [k for k in config.learned if k not in known]
            if bad:
                raise ValueError(f"guard.learned names unknown terms {bad} (known: {sorted(known)})")
            learned = list(config.learned)
        else:
            learned = [_key(s, n) for s, ts in self.terms.items() for n, t in ts.items() if getattr(t, "learned", False)]
        self.anchors: dict[str, list[str]] = {}
        for key in learned:
            step, _, name = key.partition("/")
            if config.anchors and key in config.anchors:
                anchors = list(config.anchors[key])
                bad = [a for a in anchors if a not in known or not a.startswith(step + "/") or a == key]
                if bad:
                    raise ValueError(f"guard.anchors[{key!r}]: {bad} are not other terms of step {step!r}")
            else:
                others = [n for n in self.terms[step] if n != name]
                plain = [n for n in others if _key(step, n) not in learned]
                anchors = [_key(step, n) for n in (plain or others)]
            self.anchors[key] = anchors
        # (term key, prompt) -> list of (term mean, term within-group std, anchor mean, anchor within-group std)
        self.history: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
        self.std_history: dict[str, list[float]] = {}
        self.events: list[dict[str, Any]] = []

    @property
    def learned(self) -> list[str]:
        return list(self.anchors)

    def _anchor_values(self, g: Any, step: str, anchors: Sequence[str]) -> np.ndarray:
        terms = g.steps[step].terms
        total = None
        for a in anchors:
            t = self.terms[step][a.partition("/")[2]]
            v = np.asarray(terms[t.name], dtype=np.float64) * t.weight / t.dims
            total = v if total is None else total + v
        return total

    def update(self, step_index: int, groups: Sequence[Any]) -> dict[str, float]:
        """The guard's metrics for one optimizer step's sampled groups (:class:`~rewardkit.rl.GroupRollout`
        s: ``prompt`` and per step ``terms`` and ``term_stds``); flags are logged."""
        out: dict[str, float] = {}
        if not self.cfg.enabled or not groups:
            return out
        for key, anchors in self.anchors.items():
            step, _, name = key.partition("/")
            vals = [np.asarray(g.steps[step].terms[name], dtype=np.float64) for g in groups]
            anc = [self._anchor_values(g, step, anchors) for g in groups] if anchors else None
            if anc is not None:
                out[f"guard/{key}/agreement"] = group_agreement(vals, anc)
            stds = [g.steps[step].term_stds.get(name) for g in groups]
            reasons: list[dict[str, Any]] = []
            if all(s is not None for s in stds):
                m = _nanmean(np.concatenate(stds))
                hist = self.std_history.setdefault(key, [])
                hist.append(m)
                w = self.cfg.window
                if len(hist) >= 2 * w:
                    first, last = _nanmean(np.array(hist[:w])), _nanmean(np.array(hist[-w:]))
                    if first > 0 and last > self.cfg.std_jump * first:
                        reasons.append({"reason": "uncertainty", "prompt": BATCH, "std_first": first, "std_last": last})
            if anc is not None:
                series: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
                for g, v, a in zip(groups, vals, anc):
                    series.setdefault(g.prompt, []).append((v, a))
                series[BATCH] = [(np.concatenate(vals), np.concatenate(anc))]
                for prompt, pairs in series.items():
                    v = np.concatenate([p[0] for p in pairs])
                    a = np.concatenate([p[1] for p in pairs])
                    within_v = _nanmean(np.array([_nanstd(p[0]) for p in pairs]))
                    within_a = _nanmean(np.array([_nanstd(p[1]) for p in pairs]))
                    rec = (_nanmean(v), within_v, _nanmean(a), within_a)
                    hist = self.history.setdefault((key, prompt), [])
                    hist.append(rec)
                    ev = self._trend(hist)
                    if ev is not None:
                        reasons.append({"reason": "rises while anchors fall", "prompt": prompt, **ev})
            flagged = sorted({r["prompt"] for r in reasons})
            out[f"guard/{key}/flag"] = 1.0 if reasons else 0.0
            out[f"guard/{key}/flagged_prompts"] = float(len([p for p in flagged if p != BATCH]))
            for r in reasons:
                event = {"step": step_index, "term": key, "anchors": anchors, **r}
                self.events.append(event)
                if r["reason"] == "uncertainty":
                    log.warning("reward hacking? step %d: the std of %s jumped from %.4g to %.4g (the policy left "
                                "the data its reward model knows)", step_index, key, r["std_first"], r["std_last"])
                else:
                    log.warning("reward hacking? step %d: %s rises (%+.4g) while its anchors %s fall (%+.4g) on %s, "
                                "last %d vs previous %d appearances", step_index, key, r["term_change"],
                                ",".join(anchors), r["anchor_change"], r["prompt"], self.cfg.window, self.cfg.window)
        return out

    def _trend(self, hist: list[tuple[float, float, float, float]]) -> dict[str, float] | None:
        w = self.cfg.window
        if len(hist) < 2 * w:
            return None
        prev, last = np.array(hist[-2 * w:-w]), np.array(hist[-w:])
        both = np.array(hist[-2 * w:])
        dv = _nanmean(last[:, 0]) - _nanmean(prev[:, 0])
        da = _nanmean(last[:, 2]) - _nanmean(prev[:, 2])
        sv = _nanmean(both[:, 1])
        sa = _nanmean(both[:, 3])
        sv, sa = max(sv if math.isfinite(sv) else 0.0, 1e-6), max(sa if math.isfinite(sa) else 0.0, 1e-6)
        if dv > self.cfg.min_change * sv and da < -self.cfg.min_change * sa:  # NaN compares False
            return {"term_change": dv, "anchor_change": da, "term_within_std": sv, "anchor_within_std": sa}
        return None


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _nanstd(v: np.ndarray) -> float:
    return float(np.nanstd(v)) if np.isfinite(v).sum() >= 2 else math.nan


def audit_selection(groups: Sequence[Any], top_k: int) -> list[tuple[int, int, int]]:
    """The audit's samples: ``(group index, best sample, worst sample)`` by the global step's reward for the
    ``top_k`` groups
    whose best sample scores highest (failed samples never chosen; groups without two valid samples
    skipped), highest first."""
    rows = []
    for gi, g in enumerate(groups):
        r = np.asarray(g.steps["global"].reward, dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(r))
        if len(ok) < 2:
            continue
        best, worst = int(ok[np.argmax(r[ok])]), int(ok[np.argmin(r[ok])])
        if best == worst:
            continue
        rows.append((float(r[best]), gi, best, worst))
    rows.sort(key=lambda x: (-x[0], x[1]))
    return [(gi, b, w) for _, gi, b, w in rows[:max(0, top_k)]]
