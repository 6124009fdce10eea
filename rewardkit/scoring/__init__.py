"""Exported scorers, baselines, the HTTP scorer service and RL reward adapters.

Public surface::

    from rewardkit.scoring import Scorer, ScorerSet, load_scorer, score_meshes, score_views
    Scorer(model, camera="orbit6", render_size=224, training_data=..., metrics=...).save_pretrained(dir)
    scorers = load_scorer(dir)                       # Scorer, baseline or ScorerSet (global + local)
    score_meshes(["a.glb"], "a red chair", scorers)  # -> [MeshScore(scores={"global": .., "local": ..})]
    score_views({"rgb": views}, prompts, scorer, grad=True)   # differentiable path

    from rewardkit.scoring.baselines import load_baseline      # clip-multiview, hps-multiview
    from rewardkit.scoring.service import create_app           # FastAPI app (``rewardkit serve``)
    from rewardkit.scoring.client import ScorerClient          # client of that service
    from rewardkit.scoring.adapters import trl_reward_function, compute_score   # TRL / verl
"""

from rewardkit.scoring.api import (
    MeshScore,
    ScoringTimings,
    as_scorer_set,
    close_renderers,
    render_views,
    score_meshes,
    score_views,
)
from rewardkit.scoring.export import (
    BaseScorer,
    Scorer,
    ScoreOutput,
    ScorerError,
    ScorerSet,
    ScorerVersionError,
    load_scorer,
)

__all__ = [
    "BaseScorer", "MeshScore", "ScoreOutput", "Scorer", "ScorerError", "ScorerSet", "ScorerVersionError",
    "ScoringTimings", "as_scorer_set", "close_renderers", "load_scorer", "render_views", "score_meshes", "score_views",
]
