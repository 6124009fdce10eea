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

Modules, each importing only those above it in this list (docs/architecture.md):

- ``errors``   the package's exceptions (root :class:`ScoringError`);
- ``format``   the on-disk format: file names, format/version checks, config.json and safetensors I/O;
- ``resolve``  where a scorer name points: a local folder or a Hugging Face Hub snapshot;
- ``card``     the README.md model card written from config.json (with the Hub's YAML front matter);
- ``core``     the scoring core: render groups, rendering a mesh, one forward over stacked views (each
  distinct prompt encoded once), the batched scoring loop (used by the API, the service and, through the API, the RL adapters);
- ``base``     :class:`ScoreOutput`, :class:`BaseScorer` (an ABC), :class:`ScorerSet`, the registry of
  scorer kinds and :func:`load_scorer`;
- ``stage``    :class:`Scorer`, the exported stage reward model (kind ``stage-model``), and rebuilding a
  stage scorer from config.json (shared with ``ensemble``);
- ``ensemble`` :class:`EnsembleScorer`, N reward heads on one stage model (kind ``stage-ensemble``): mean + std;
- ``baselines`` CLIP / HPS v2.1 multi-view baselines (kinds ``clip-multiview``, ``hps-multiview``);
- ``api``      :func:`score_meshes`, :func:`score_views`, :func:`render_views`, :func:`as_scorer_set`;
- ``hub``      pushing a scorer (set) to the Hugging Face Hub (loading is ``load_scorer("org/name")``);
- ``wire``     the HTTP wire format (PNG views, mesh uploads), shared by ``service`` and ``client``;
- ``service_limits``  the service's limits, token, request guard (ASGI middleware) and uvicorn configuration;
- ``service_batching`` the service's micro-batcher (one forward per scorer and view shape);
- ``service_requests`` the service's request validation (JSON items, uploads);
- ``service`` / ``client``  the HTTP service (app wiring and routes) and its client;
- ``service_ray`` / ``adapters``  the service as Ray Serve replicas (needs ``rewardkit[ray]``); the TRL/verl
  reward functions.
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
from rewardkit.scoring.base import SCORER_KINDS, BaseScorer, ScoreOutput, ScorerSet, load_scorer, register_scorer_kind
from rewardkit.scoring.baselines import ClipMultiviewScorer, HpsMultiviewScorer  # registers the baseline kinds
from rewardkit.scoring.ensemble import EnsembleScorer  # registers the stage-ensemble kind
from rewardkit.scoring.errors import ScorerError, ScorerVersionError, ScoringError
from rewardkit.scoring.stage import Scorer  # registers the stage-model kind

__all__ = [
    "SCORER_KINDS", "BaseScorer", "ClipMultiviewScorer", "EnsembleScorer", "HpsMultiviewScorer", "MeshScore", "ScoreOutput", "Scorer",
    "ScorerError", "ScorerSet", "ScorerVersionError", "ScoringError", "ScoringTimings", "as_scorer_set",
    "close_renderers", "load_scorer", "register_scorer_kind", "render_views", "score_meshes", "score_views",
]
