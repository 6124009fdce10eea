"""Reward callables backed by rewardkit scorers: an exported scorer directory (in-process) or a running
scoring service (HTTP). Both return ``fn(meshes, prompts) -> list[float | None]``.

A sample without a mesh (``None``: the policy's tokens decoded to an empty grid) cannot be rendered;
it scores ``empty_score`` when one is configured, otherwise ``None`` (the step's ``on_error`` then
raises or marks it). Nothing is filled in silently.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["local_scorer_reward", "service_reward"]


def _with_empty(score_meshes: Callable[[list[Any], list[str]], Sequence[float]], empty_score: float | None):
    def fn(meshes: Sequence[Any], prompts: Sequence[str]) -> list[float | None]:
        idx = [i for i, m in enumerate(meshes) if m is not None]
        out: list[float | None] = [empty_score] * len(meshes)
        if idx:
            scores = list(score_meshes([meshes[i] for i in idx], [prompts[i] for i in idx]))
            if len(scores) != len(idx):
                raise RuntimeError(f"scorer returned {len(scores)} scores for {len(idx)} meshes")
            for i, s in zip(idx, scores):
                out[i] = None if s is None else float(s)
        return out

    return fn


def local_scorer_reward(
    path: str, stage: str | None = None, device: str = "cpu", empty_score: float | None = None, **score_kwargs: Any
) -> Callable[[Sequence[Any], Sequence[str]], list[float | None]]:
    """Score with an exported scorer directory (``Scorer.save_pretrained``) or a scorer set
    (``stage`` picks ``global`` / ``local``)."""
    from rewardkit import scoring

    scorer = scoring.load_scorer(path, device=device) if hasattr(scoring, "load_scorer") else scoring.Scorer.from_pretrained(path, device=device)
    if hasattr(scorer, "scorers") and not hasattr(scorer, "score_meshes"):  # a ScorerSet
        if stage is None:
            raise ValueError(f"{path} holds a scorer set; pass args: {{stage: global|local}}")
        scorer = scorer[stage] if hasattr(scorer, "__getitem__") else scorer.scorers[stage]

    def score(meshes: list[Any], prompts: list[str]) -> Sequence[float]:
        out = scorer.score_meshes(meshes, prompts, **score_kwargs)
        return out.tolist() if hasattr(out, "tolist") else out

    return _with_empty(score, empty_score)


def service_reward(
    url: str, stage: str | None = None, empty_score: float | None = None, timeout: float = 120.0, **client_kwargs: Any
) -> Callable[[Sequence[Any], Sequence[str]], list[float | None]]:
    """Score through a running ``rewardkit serve`` service."""
    from rewardkit.scoring import client as scoring_client

    c = scoring_client.ScoringClient(url, timeout=timeout, **client_kwargs)

    def score(meshes: list[Any], prompts: list[str]) -> Sequence[float]:
        return c.score_meshes(meshes, prompts, stage=stage)

    return _with_empty(score, empty_score)
