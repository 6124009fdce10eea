"""Transfer of exported scorers to real meshes: each original against controlled degradations of it.

One implementation for the ``evaluate`` stage's real-mesh report and ``benchmarks/bench_transfer.py``::

    from rewardkit.eval import transfer
    report = transfer.transfer_report(scorers, "../shared/meshes", "out/transfer", noise=(0.01, 0.03))

For every asset of ``<meshes>/manifest.json`` (``id``, ``mesh``, ``prompt``; the real-mesh validation set,
never trained on) the mesh is loaded and normalised with :func:`rewardkit.io.load_mesh` and written as GLB:

- ``original``: unchanged;
- ``vertex_noise@<s>`` (**geometry**, the global stage's own): every distinct vertex position moved by
  Gaussian noise of ``s`` x the largest extent, once per strength (coincident vertices, e.g. at UV seams,
  move together, so the surface does not tear); colours untouched;
- ``texture_grey`` (**texture**, the local stage's own): texture images, material and vertex colours turned to
  their luminance; geometry untouched;
- ``hue_rotated``: the hue of the same turned by ``hue`` degrees.

A texture variant that leaves the mesh's colours unchanged (no colour, or already grey) is skipped. Per stage
and degradation the report gives how often the original scores above the degraded mesh (a tie counts half),
the mean margin, and the largest ``|global(original) - global(texture-only change)|``, which must be 0: the
global stage renders geometry only.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rewardkit.demo.textures import grey, hue_rotate

TEXTURE = ("texture_grey", "hue_rotated")
OWNS = {"global": "geometry", "local": "texture"}


def noise_name(strength: float) -> str:
    return f"vertex_noise@{strength:g}"


def kind_of(variant: str) -> str:
    """``geometry`` for a vertex-noise variant, ``texture`` for the colour ones."""
    return "geometry" if variant.startswith("vertex_noise") else "texture"


def _map_rgba(arr, fn) -> np.ndarray:
    a = np.array(arr, dtype=np.float64)
    scale = 255.0 if a.size and a.max() <= 1.0 and np.issubdtype(np.asarray(arr).dtype, np.floating) else 1.0
    u8 = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    out = u8.copy()
    out[..., :3] = fn(u8[..., :3])
    return out.astype(np.float64) / scale if scale != 1.0 else out


def _map_image(img, fn):
    from PIL import Image

    mode = "RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB"
    a = np.asarray(img.convert(mode)).copy()
    a[..., :3] = fn(a[..., :3])
    return Image.fromarray(a, mode)


def recolour(scene, fn):
    """A copy of ``scene`` with every texture image, material colour and vertex/face colour mapped by ``fn``."""
    import trimesh

    out = trimesh.Scene()
    for name, g in scene.geometry.items():
        g = g.copy()
        vis = g.visual
        if isinstance(vis, trimesh.visual.texture.TextureVisuals) and vis.material is not None:
            mat = copy.deepcopy(vis.material)
            for attr in ("image", "baseColorTexture"):
                if getattr(mat, attr, None) is not None:
                    setattr(mat, attr, _map_image(getattr(mat, attr), fn))
            for attr in ("diffuse", "ambient", "baseColorFactor"):
                if getattr(mat, attr, None) is not None:
                    setattr(mat, attr, _map_rgba(getattr(mat, attr), fn))
            g.visual = trimesh.visual.texture.TextureVisuals(uv=vis.uv, material=mat)
        elif isinstance(vis, trimesh.visual.color.ColorVisuals) and vis.defined:
            if vis.kind == "vertex":
                g.visual = trimesh.visual.ColorVisuals(g, vertex_colors=_map_rgba(vis.vertex_colors, fn))
            elif vis.kind == "face":
                g.visual = trimesh.visual.ColorVisuals(g, face_colors=_map_rgba(vis.face_colors, fn))
        out.add_geometry(g, geom_name=name)
    return out


def vertex_noise(scene, fraction: float, seed: int):
    """A copy of ``scene`` with each distinct vertex position moved by N(0, fraction * largest extent)."""
    import trimesh

    geoms = list(scene.geometry.items())
    allv = np.concatenate([g.vertices for _, g in geoms])
    extent = float((allv.max(0) - allv.min(0)).max())
    uniq, inverse = np.unique(np.round(allv, 6), axis=0, return_inverse=True)
    noise = np.random.default_rng(seed).normal(0.0, fraction * extent, size=uniq.shape)[inverse.reshape(-1)]
    out, start = trimesh.Scene(), 0
    for name, g in geoms:
        g = g.copy()
        g.vertices = g.vertices + noise[start:start + len(g.vertices)]
        start += len(g.vertices)
        out.add_geometry(g, geom_name=name)
    return out


def make_variants(manifest: str | Path, out: str | Path, noise: Sequence[float] = (0.01, 0.03),
                  hue: float = 120.0) -> tuple[list[dict], list[dict]]:
    """GLBs of every asset of ``manifest`` and its degradations under ``out``: ``(rows, skipped)``; a row
    is ``{id, variant, mesh, prompt}``, a skipped comparison ``{id, variant, why}``."""
    from rewardkit.io import load_mesh

    manifest, out = Path(manifest), Path(out)
    rows, skipped = [], []
    assets = json.loads(manifest.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for n, a in enumerate(assets):
        src = manifest.parent / a["id"] / a["mesh"]
        try:
            mesh = load_mesh(src)
        except Exception as exc:  # a broken asset is reported, the others still count
            skipped.append({"id": a["id"], "variant": "*", "why": f"load failed: {exc}"})
            continue
        variants = {"original": mesh.scene}
        for s in noise:
            variants[noise_name(s)] = vertex_noise(mesh.scene, s, seed=n)
        variants["texture_grey"] = recolour(mesh.scene, grey)
        variants["hue_rotated"] = recolour(mesh.scene, lambda x: hue_rotate(x, hue))
        data = {k: s.export(file_type="glb") for k, s in variants.items()}
        for k, b in data.items():
            if k in TEXTURE and b == data["original"]:
                skipped.append({"id": a["id"], "variant": k, "why": "colours unchanged (no colour, or already grey)"})
                continue
            f = out / f"{a['id']}__{k}.glb"
            f.write_bytes(b)
            rows.append({"id": a["id"], "variant": k, "mesh": str(f), "prompt": a["prompt"]})
    return rows, skipped


def score_rows(rows: list[dict], scorers: Any, progress: Callable[[int, int], None] | None = None,
               ) -> dict[tuple[str, str], dict[str, float]]:
    """``{(id, variant): {stage: score}}`` for every row, scored in this process (rendered as the scorers
    were trained: their recorded camera protocol and size). Rows that fail to score are left out."""
    from rewardkit.scoring import score_meshes

    res = score_meshes([r["mesh"] for r in rows], [r["prompt"] for r in rows], scorers, progress=progress)
    return {(r["id"], r["variant"]): dict(s.scores) for r, s in zip(rows, res) if s.ok}


def _pooled(margins_by: dict[str, list[float]], kind: str) -> float | None:
    """The fraction of wins (ties half) over every comparison of the variants of ``kind``."""
    m = [d for v, ms in margins_by.items() if kind_of(v) == kind for d in ms]
    return round(sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in m) / len(m), 4) if m else None


def summarise(scores: dict[tuple[str, str], dict[str, float]]) -> dict[str, Any]:
    """Per stage and variant: how often the original wins (ties half), with counts and mean margins; per
    stage the same over its own and the other stage's variants; global's largest shift under texture-only
    changes."""
    ids = sorted({i for i, _ in scores})
    stages = sorted({s for v in scores.values() for s in v})
    variants = sorted({v for _, v in scores if v != "original"}, key=lambda v: (kind_of(v) != "geometry", v))
    out: dict[str, Any] = {}
    for stage in stages:
        per, margins_by = {}, {}
        for deg in variants:
            margins = [scores[(i, "original")][stage] - scores[(i, deg)][stage]
                       for i in ids if (i, "original") in scores and (i, deg) in scores]
            wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in margins)
            margins_by[deg] = margins
            per[deg] = {"original_wins": round(wins / len(margins), 4) if margins else None, "n": len(margins),
                        "mean_margin": round(float(np.mean(margins)), 4) if margins else None}

        own_kind = OWNS[stage] if stage in OWNS else None
        other_kind = {"geometry": "texture", "texture": "geometry"}.get(own_kind or "")
        own_wins = [v["original_wins"] for d, v in per.items() if kind_of(d) == own_kind and v["n"]]
        out[stage] = {"per_degradation": per, "own": _pooled(margins_by, own_kind) if own_kind else None,
                      "own_min": min(own_wins) if own_wins else None,
                      "other": _pooled(margins_by, other_kind) if other_kind else None}
    if "global" in stages:
        shifts = [abs(scores[(i, "original")]["global"] - scores[(i, d)]["global"])
                  for i in ids for d in TEXTURE if (i, d) in scores and (i, "original") in scores]
        out["global"]["max_abs_shift_under_texture_changes"] = float(max(shifts)) if shifts else None
    return out


def transfer_report(scorers: Any, meshes: str | Path, out: str | Path, noise: Sequence[float] = (0.01, 0.03),
                    hue: float = 120.0, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Make the variants of ``meshes/manifest.json`` under ``out``, score them with ``scorers`` (a scorer
    set, scorer or directory) and summarise: ``{meshes, noise, hue, scored, skipped, <stage>: ...}``."""
    manifest = Path(meshes) / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not found (a folder of real meshes with a manifest.json)")
    rows, skipped = make_variants(manifest, out, noise, hue)
    scores = score_rows(rows, scorers, progress=progress)
    return {"meshes": len({r["id"] for r in rows}), "noise": list(noise), "hue": hue, "scored": len(scores),
            "skipped": skipped, **summarise(scores)}


__all__ = ["OWNS", "TEXTURE", "kind_of", "make_variants", "noise_name", "recolour", "score_rows", "summarise",
           "transfer_report", "vertex_noise"]
