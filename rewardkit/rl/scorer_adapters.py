"""Reward callables backed by rewardkit scorers, for the Hi-GRPO reward terms.

``scorer_reward(scorer_dir)`` scores in-process with an exported scorer or scorer set
(:func:`rewardkit.scoring.load_scorer`); ``scorer_reward(url=...)`` goes through a running
``rewardkit serve``. Both use :mod:`rewardkit.scoring.adapters`' backends (meshes rendered once for
all scorers of a set) and return ``fn(meshes, prompts) -> list[float | None]``:

- ``stage`` picks one scorer of a set (``global`` for R_high terms, ``local`` for R_low terms);
  ``weights`` sums several; neither sums all (what :func:`rewardkit.scoring.adapters.combine` does);
- a sample the scorer could not score (render or model error, a dropped HTTP request) is ``None``;
- a sample without a mesh (the policy's tokens decoded to an empty grid) is ``empty_score`` when one is
  configured, otherwise ``None``;
- when the scorers the reward reads are ensembles (kind ``stage-ensemble``), ``fn`` returns
  :class:`rewardkit.rl.term_values.TermValues` (the members' mean and their std per sample, a sample without a
  mesh std 0), which the trainer logs as ``<step>/<term>_uncertainty``, the reward-hacking guard watches and
  ``uncertainty_penalty: k`` turns into ``mean - k * std``.

``None`` is never replaced by a constant here: the step's ``on_error`` raises or marks the sample.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from rewardkit.rl.term_values import RewardFn, TermValues

__all__ = ["scorer_reward"]



def scorer_reward(
    scorer: Any = None,
    *,
    url: str | None = None,
    stage: str | None = None,
    weights: Mapping[str, float] | None = None,
    empty_score: float | None = None,
    device: str | None = "auto",
    **backend_kw: Any,
) -> RewardFn:
    from rewardkit.scoring.adapters import combine, combine_std, make_backend, needed_scorers

    if stage is not None and weights is not None:
        raise ValueError("give stage or weights, not both")
    needed = needed_scorers(stage, weights)
    backend = make_backend(scorer, url=url, device=device, only=needed, **backend_kw)
    known: dict[str, Any] = {}

    def reads() -> tuple[list[str], bool]:  # asked on the first call (a service is not contacted before)
        if known:
            return known["names"], known["with_std"]
        try:
            names = list(needed) if needed is not None else list(backend.names())
            std_names = set(getattr(backend, "std_names", list)())
        except Exception:  # an unreachable service: this call's samples fail (None); ask again next call
            return list(needed or []), False
        known.update(names=names, with_std=bool(names) and all(n in std_names for n in names))
        return known["names"], known["with_std"]

    def fn(meshes: Sequence[Any], prompts: Sequence[str]) -> list[float | None] | TermValues:
        names, with_std = reads()
        out: list[float | None] = [empty_score] * len(meshes)
        std: list[float | None] = [0.0 if empty_score is not None else None] * len(meshes)
        idx = [i for i, m in enumerate(meshes) if m is not None]
        if idx:
            results = backend.score([meshes[i] for i in idx], [prompts[i] for i in idx])
            if len(results) != len(idx):
                raise RuntimeError(f"scorer returned {len(results)} results for {len(idx)} meshes")
            for i, r in zip(idx, results):
                if r.get("error"):
                    out[i] = std[i] = None
                else:
                    out[i] = combine(r["scores"], stage=stage, weights=weights)
                    std[i] = combine_std(r.get("std") or {}, stage=stage, weights=weights, names=names)
        return TermValues(mean=out, std=std) if with_std else out

    return fn
