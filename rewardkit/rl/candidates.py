"""The policy's samples as candidates: meshes plus a ``candidates.csv`` in the own-generations format.

A folder written here is what :func:`rewardkit.data.candidates.read_generations` reads (and so what the
pipeline's ``generate.source: own`` takes), without conversion. One row per mesh:

======================  ===========================================================================
column                  meaning
======================  ===========================================================================
``mesh_path``           the mesh (PLY), relative to the folder: ``<tag>/g<group>-s<sample>-<mesh>.ply``
``prompt``, ``prompt_id``  the prompt (``prompt_id`` = :func:`~rewardkit.data.candidates.prompt_id_of`)
``item_id``             ``<tag>-g<group>-s<sample>-<mesh>`` (unique over the folder)
``generator``           the policy that sampled it: ``<policy_path>@step-<N>`` (the start checkpoint
                        after N Hi-GRPO optimizer steps; the run's ``checkpoints/step-N`` when saved)
``step``                N, the optimizer steps the policy had taken (0: before training)
``seed``                the seed of the rollout batch (the same policy, batch and seed resample it)
``sample``              the sample's index in its prompt group
``hi_grpo_step``        ``global`` for the coarse mesh (step 1), ``local`` for the refined one (step 2)
``mesh``                ``coarse`` | ``refined`` (the mesh kind of that step)
``global/reward``, ``local/reward``  the sample's step rewards (both steps' on both rows: one sample, two meshes)
``global/<term>``, ``local/<term>``  every reward term's raw value; ``<...>_std`` where a term reports one
======================  ===========================================================================

Samples whose tokens decoded to no surface have no mesh and are left out (counted in the return value).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from rewardkit.data.candidates import MANIFEST_NAME, prompt_id_of
from rewardkit.rl.records import STEPS

__all__ = ["CandidatesConfig", "write_generations", "item_id_of", "MESH_KINDS"]

MESH_KINDS = {1: "coarse", 2: "refined"}  # by Hi-GRPO step: 1 global, 2 local
FIXED_COLUMNS = ("mesh_path", "prompt", "prompt_id", "item_id", "generator", "step", "seed", "sample",
                 "hi_grpo_step", "mesh", "global/reward", "local/reward")


@dataclass
class CandidatesConfig:
    """Which of the policy's samples a Hi-GRPO run writes as candidates (``output_dir/candidates/``)."""

    every: int = 0  # the samples of every N-th optimizer step (all groups sampled, dropped ones too); 0: none
    eval: bool = False  # also the fixed-seed before/after evaluation samples (steps 0 and the last)
    meshes: Literal["coarse", "refined", "both"] = "both"  # global-step meshes, local-step meshes, or both


def item_id_of(tag: str, group: int, sample: int, step: int) -> str:
    """The item id of a sample's mesh (``step`` 1: the global step's coarse mesh, 2: the local step's refined
    one) in a candidates folder."""
    return f"{tag}-g{group:02d}-s{sample:02d}-{MESH_KINDS[step]}"


def _num(v: Any) -> str:
    v = float(v)
    return "" if not math.isfinite(v) else f"{v:.6g}"


def _which(meshes: str) -> tuple[int, ...]:
    if meshes not in ("coarse", "refined", "both"):
        raise ValueError(f"candidates.meshes must be coarse, refined or both, got {meshes!r}")
    return {"coarse": (1,), "refined": (2,), "both": (1, 2)}[meshes]


def write_generations(groups: Sequence[Any], folder: str | Path, *, tag: str, step: int, generator: str,
                      meshes: str = "both", samples: dict[int, Sequence[int]] | None = None) -> dict[str, int]:
    """Write the groups' meshes under ``folder/tag/`` and add their rows to ``folder/candidates.csv``
    (rows of an earlier call stay; rows with the same ``item_id`` are replaced). ``samples``: per group
    index, which samples to write (default: all). Returns ``{"written": n, "empty": m}``."""
    folder = Path(folder)
    kinds = _which(meshes)
    (folder / tag).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    empty = 0
    for gi, g in enumerate(groups):
        pid = prompt_id_of(g.prompt)
        for s in (samples or {}).get(gi, range(g.group_size)):
            for k in kinds:
                mesh = g.steps[STEPS[k - 1]].meshes[s]
                if mesh is None:
                    empty += 1
                    continue
                item = item_id_of(tag, gi, s, k)
                rel = Path(tag) / f"{item.removeprefix(tag + '-')}.ply"
                mesh.export(folder / rel)
                row = {"mesh_path": rel.as_posix(), "prompt": g.prompt, "prompt_id": pid, "item_id": item,
                       "generator": generator, "step": str(step), "seed": "" if g.seed is None else str(g.seed),
                       "sample": str(s), "hi_grpo_step": STEPS[k - 1], "mesh": MESH_KINDS[k],
                       **{f"{name}/reward": _num(g.steps[name].reward[s]) for name in STEPS}}
                for name in STEPS:
                    for t, v in g.steps[name].terms.items():
                        row[f"{name}/{t}"] = _num(v[s])
                    for t, v in g.steps[name].term_stds.items():
                        row[f"{name}/{t}_std"] = _num(v[s])
                rows.append(row)
    _merge_rows(folder / MANIFEST_NAME, rows)
    return {"written": len(rows), "empty": empty}


def _merge_rows(path: Path, rows: list[dict[str, str]]) -> None:
    old: list[dict[str, str]] = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    new_ids = {r["item_id"] for r in rows}
    merged = [r for r in old if r.get("item_id") not in new_ids] + rows
    cols = list(FIXED_COLUMNS)
    for r in merged:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(merged)
