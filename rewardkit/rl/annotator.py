"""The stand-in annotator for the policy's samples (the loop's next round on the demo).

The demo's rule-based annotator (:mod:`rewardkit.demo.annotator`) answers from the degradations the demo
generator recorded; the policy's samples (:mod:`rewardkit.rl.candidates`) record none. This one answers
from the meshes themselves, with the anchor rewards of the Hi-GRPO demo (:mod:`rewardkit.rl.rewards`):

- the *global* question (shape, parts, proportions) from the shape anchor: the occupancy IoU of the mesh
  with the prompt's target shape (``occupancy_iou``);
- the *local* question (detail) from the detail anchors: the mean of the surface F1 against the target
  (``surface_f1``) and the mirror symmetry (``mirror_symmetry``).

The candidate whose anchor value is higher by more than ``margin`` wins; closer values are a ``tie``. With
``noise > 0`` an answer is, with that probability, replaced by one of the two others, like a careless
annotator. Every mesh is read through the bounded mesh loader (:mod:`rewardkit.io`); prompts must be demo
prompts (the anchors need the target shape). Rows carry ``source="synthetic"`` and ``annotator=
"anchor-rules"``: they stand in for human labels, they are not human labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rewardkit.demo.annotator import answer_pairs
from rewardkit.errors import RewardkitError
from rewardkit.rl.rewards import BUILTIN_REWARDS

ANNOTATOR = "anchor-rules"
QUESTIONS = ("global", "local")


class AnchorError(RewardkitError, ValueError):
    """A paired candidate the anchor rules cannot judge (its mesh unreadable, its prompt not a demo prompt)."""


@dataclass
class AnchorRules:
    """Which anchors answer which question, and how close is a tie (``preferences.anchors`` in params.yaml)."""

    global_terms: tuple[str, ...] = ("occupancy_iou",)  # builtin rewards averaged for the global question
    local_terms: tuple[str, ...] = ("surface_f1", "mirror_symmetry")  # ... for the local question
    resolution: int = 8  # the occupancy grid the anchors are computed on (the demo policy's)
    margin: float = 0.05  # |value_a - value_b| <= margin: tie

    def __post_init__(self) -> None:
        self.global_terms, self.local_terms = tuple(self.global_terms), tuple(self.local_terms)
        for t in self.global_terms + self.local_terms:
            if t not in BUILTIN_REWARDS:
                raise ValueError(f"unknown anchor {t!r}; known: {sorted(BUILTIN_REWARDS)}")
        if not self.global_terms or not self.local_terms:
            raise ValueError("both questions need at least one anchor")
        if self.resolution < 2:
            raise ValueError(f"resolution must be at least 2, got {self.resolution}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


RAY_OFFSET = (0.5173, 0.4881)  # where in its grid cell a column's ray runs: off the cell's diagonals


def grid_occupancy(mesh: Any, resolution: int) -> np.ndarray:
    """The occupancy grid of a closed mesh in the policy's frame, ``[-0.5, 0.5]^3`` split into
    ``resolution^3`` voxels, without re-normalizing it (what :func:`~rewardkit.rl.tokenizers.base.
    occupancy_to_mesh` wrote is read back exactly). One ray per column of voxels, parallel to z through the
    cell at ``RAY_OFFSET``; a voxel is occupied when its centre has an odd number of surface crossings
    below it (the even-odd rule)."""
    res = int(resolution)
    tri = np.asarray(mesh.triangles, dtype=np.float64)
    occ = np.zeros((res, res, res), dtype=bool)
    if len(tri) == 0:
        return occ
    xy = tri[:, :, :2]
    e1, e2 = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    keep = np.abs(det) > 1e-12  # faces parallel to the rays cross none
    tri, xy, e1, e2, det = tri[keep], xy[keep], e1[keep], e2[keep], det[keep]
    off = np.asarray(RAY_OFFSET)
    # the columns whose ray can hit each face: ray (i + off) / res - 0.5 within the face's xy bounds
    lo = np.clip(np.ceil((xy.min(axis=1) + 0.5) * res - off), 0, res).astype(int)
    hi = np.clip(np.floor((xy.max(axis=1) + 0.5) * res - off), -1, res - 1).astype(int)
    n_i, n_j = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0), np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    counts = n_i * n_j
    face = np.repeat(np.arange(len(tri)), counts)
    if face.size == 0:
        return occ
    k = np.arange(face.size) - np.repeat(np.cumsum(counts) - counts, counts)
    ci = lo[face, 0] + k // n_j[face]
    cj = lo[face, 1] + k % n_j[face]
    ray = (np.stack([ci, cj], axis=1) + off) / res - 0.5
    d = ray - xy[face, 0]
    u = (d[:, 0] * e2[face, 1] - d[:, 1] * e2[face, 0]) / det[face]
    v = (e1[face, 0] * d[:, 1] - e1[face, 1] * d[:, 0]) / det[face]
    hit = (u >= 0) & (v >= 0) & (u + v <= 1)
    z = tri[face, 0, 2] + u * (tri[face, 1, 2] - tri[face, 0, 2]) + v * (tri[face, 2, 2] - tri[face, 0, 2])
    ci, cj, z = ci[hit], cj[hit], z[hit]
    centres = (np.arange(res) + 0.5) / res - 0.5
    below = np.zeros((res, res, res), dtype=np.int64)
    np.add.at(below, (ci, cj), (z[:, None] < centres[None, :]).astype(np.int64))
    return (below % 2).astype(bool)


def _policy_frame(loaded: Any) -> Any:
    """The loaded mesh back in the frame it was written in (the loader centres and scales every mesh)."""
    n = loaded.normalization
    mesh = loaded.scene.to_geometry() if hasattr(loaded.scene, "to_geometry") else loaded.scene.dump(concatenate=True)
    mesh.apply_scale(1.0 / float(n["scale"]))
    mesh.apply_translation(np.asarray(n["center"], dtype=np.float64))
    mesh.apply_transform(np.asarray(n["rotation"], dtype=np.float64).T)
    return mesh


def anchor_values(items: pl.DataFrame, rules: AnchorRules | None = None, *, root: str | Path = ".",
                  loader: Any = None) -> dict[str, dict[str, float]]:
    """``{item_id: {"global": v, "local": v}}`` for the rows of ``items`` (``item_id``, ``prompt``,
    ``mesh_path`` relative to ``root``). Every problem (an unreadable mesh, an unknown prompt) is collected
    and raised at once as :class:`AnchorError`, naming the item and its file."""
    from rewardkit.io import default_loader

    rules = rules or AnchorRules()
    loader = loader or default_loader()
    fns = {name: BUILTIN_REWARDS[name](resolution=rules.resolution)
           for name in set(rules.global_terms + rules.local_terms)}
    out: dict[str, dict[str, float]] = {}
    problems: list[str] = []
    for item_id, prompt, rel in items.select("item_id", "prompt", "mesh_path").iter_rows():
        path = Path(root) / rel
        try:
            mesh = _policy_frame(loader.load(path))
            mesh.metadata["occupancy"] = grid_occupancy(mesh, rules.resolution)  # what the anchors read
            vals = {name: float(fn([mesh], [prompt])[0]) for name, fn in fns.items()}
        except KeyError as exc:  # not a demo prompt: no target shape
            problems.append(f"{item_id} ({path}): {exc.args[0]}")
            continue
        except Exception as exc:  # MeshError and whatever a broken file raises
            problems.append(f"{item_id} ({path}): cannot judge the mesh ({getattr(exc, 'reason', None) or exc})")
            continue
        out[item_id] = {"global": float(np.mean([vals[t] for t in rules.global_terms])),
                        "local": float(np.mean([vals[t] for t in rules.local_terms]))}
    if problems:
        raise AnchorError(f"{len(problems)} candidate(s) the anchor rules cannot judge:\n  " + "\n  ".join(problems[:20]))
    return out


def anchor_label(value_a: float, value_b: float, margin: float) -> str:
    """The preferred side given the two candidates' anchor values."""
    if abs(value_a - value_b) <= margin:
        return "tie"
    return "a" if value_a > value_b else "b"


def label_pairs_by_anchors(pairs: pl.DataFrame, items: pl.DataFrame, rules: AnchorRules | None = None, *,
                           noise: float = 0.0, seed: int = 0, root: str | Path = ".",
                           questions: tuple[str, ...] = QUESTIONS) -> pl.DataFrame:
    """A ``preferences`` table for ``pairs`` (one row per pair and question), answered by the anchors of
    the paired items' meshes (``items``: ``item_id``, ``prompt``, ``mesh_path``)."""
    rules = rules or AnchorRules()
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    unknown_q = [q for q in questions if q not in QUESTIONS]
    if unknown_q:
        raise ValueError(f"unknown questions {unknown_q}; known: {list(QUESTIONS)}")
    paired = set(pairs["item_a"].to_list()) | set(pairs["item_b"].to_list())
    missing = sorted(paired - set(items["item_id"].to_list()))
    if missing:
        raise KeyError(f"pairs refer to items missing from the items table: {missing[:10]}")
    values = anchor_values(items.filter(pl.col("item_id").is_in(sorted(paired))), rules, root=root)
    return answer_pairs(pairs, questions, lambda a, b, q: anchor_label(values[a][q], values[b][q], rules.margin),
                        noise=noise, seed=seed, stream=11, annotator=ANNOTATOR)


RULES = ("auto", "degradations", "anchors")


def stand_in_preferences(pairs: pl.DataFrame, candidates: pl.DataFrame, items: pl.DataFrame, *, rules: str = "auto",
                         anchors: AnchorRules | None = None, noise: float = 0.0, seed: int = 0,
                         log=print) -> pl.DataFrame:
    """Synthetic answers for ``pairs`` (the pipeline's ``label`` stage with ``preferences.source:
    synthetic``): ``degradations`` answers from the degradations the candidates record (the demo's rule
    annotator), ``anchors`` from the meshes' anchor values; ``auto`` the first when the candidates record
    their degradations, else the second. Raises ConfigError for a rules value that cannot label the pairs."""
    from rewardkit.config import ConfigError
    from rewardkit.demo.annotator import UnrecordedDegradation, label_pairs

    if rules not in RULES:
        raise ConfigError(f"preferences.rules must be one of {RULES}, not {rules!r}")
    if rules != "anchors":
        try:
            prefs = label_pairs(pairs, candidates, noise=noise, seed=seed)
            log("  rules: degradations (rewardkit.demo)")
            return prefs
        except UnrecordedDegradation as exc:  # a lab's own generations, or the policy's samples
            if rules == "degradations":
                raise ConfigError(f"preferences.rules is 'degradations', but {exc}. Set preferences.rules: anchors "
                                  "(demo prompts), collect human labels (preferences.source: labelstudio) or record "
                                  "both degradation columns in candidates.csv") from None
            log("  rules: anchors (the paired candidates record no degradations)")
    try:
        return label_pairs_by_anchors(pairs, items, anchors, noise=noise, seed=seed)
    except (AnchorError, KeyError, ValueError) as exc:
        raise ConfigError(f"the anchor rules cannot label these pairs: {exc}. Collect human labels "
                          "(preferences.source: labelstudio)") from None


__all__ = ["ANNOTATOR", "AnchorError", "AnchorRules", "RULES", "anchor_label", "anchor_values", "grid_occupancy",
           "label_pairs_by_anchors", "stand_in_preferences"]
