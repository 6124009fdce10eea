"""Reward callables backed by rewardkit scorers, for the Hi-GRPO reward terms.

``scorer_reward(scorer_dir)`` scores in-process with an exported scorer or scorer set
(:func:`rewardkit.scoring.load_scorer`); ``scorer_reward(url=...)`` goes through a running
``rewardkit serve``. Both use :mod:`rewardkit.scoring.adapters`' backends (meshes rendered once for
all scorers of a set) and return ``fn(meshes, prompts) -> list[float | None]``:

- ``stage`` picks one scorer of a set (``global`` for R_high terms, ``local`` for R_low terms);
  ``weights`` sums several; neither sums all (what :func:`rewardkit.scoring.adapters.combine` does);
- a sample the scorer could not score (render or model error, a dropped HTTP request) is ``None``;
- a sample without a mesh (the policy's tokens decoded to an empty grid) is ``empty_score`` when one is
  configured, otherwise ``None``.

``None`` is never replaced by a constant here: the step's ``on_error`` raises or marks the sample.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

__all__ = ["scorer_reward", "local_scorer_reward", "service_reward"]

RewardFn = Callable[[Sequence[Any], Sequence[str]], list]


def scorer_reward(
    scorer: Any = None,
    *,
    url: str | None = None,
    stage: str | None = None,
    weights: Mapping[str, float] | None = None,
    empty_score: float | None = None,
    device: str | None = None,
    **backend_kw: Any,
) -> RewardFn:
    from rewardkit.scoring.adapters import combine, make_backend

    if stage is not None and weights is not None:
        raise ValueError("give stage or weights, not both")
    backend = make_backend(scorer, url=url, device=device, **backend_kw)
    last_errors: list[str] = []

    def fn(meshes: Sequence[Any], prompts: Sequence[str]) -> list[float | None]:
        out: list[float | None] = [empty_score] * len(meshes)
        idx = [i for i, m in enumerate(meshes) if m is not None]
        last_errors.clear()
        if not idx:
            return out
        results = backend.score([meshes[i] for i in idx], [prompts[i] for i in idx])
        if len(results) != len(idx):
            raise RuntimeError(f"scorer returned {len(results)} results for {len(idx)} meshes")
        for i, r in zip(idx, results):
            if r.get("error"):
                out[i] = None
                last_errors.append(str(r["error"]))
            else:
                out[i] = combine(r["scores"], stage=stage, weights=weights)
        return out

    fn.errors = last_errors  # type: ignore[attr-defined]  # the latest call's scorer errors, for debugging
    return fn


def local_scorer_reward(path: str, **kw: Any) -> RewardFn:
    """An exported scorer (set) directory, scored in-process."""
    return scorer_reward(path, **kw)


def service_reward(url: str, **kw: Any) -> RewardFn:
    """A running ``rewardkit serve`` service."""
    return scorer_reward(url=url, **kw)
