"""The before/after sample grid of a Hi-GRPO run (``samples_before/renders.png``, ``samples_after/``).

One row per evaluation prompt; for each of its first samples two columns, the global step's (step 1, coarse)
mesh and the local step's (step 2, refined) mesh, rendered inside the outline of the grid box. Column headers
name the sample and the step; under each mesh its step reward (global or local) and every reward term
with its weight, so a cell reads at a glance. ``sample_cells`` gives the same numbers as data (written
to ``samples.json`` as ``grid``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

STEP_NAMES = {1: "global: coarse shape", 2: "local: refined"}
STEP_KEYS = {1: "global", 2: "local"}  # GroupRollout.steps
STEP_COLOURS = {1: "#1f77b4", 2: "#d9480f"}


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 4)


def sample_cells(groups: Sequence[Any], max_samples: int = 4, weights: dict[str, dict[str, float]] | None = None) -> dict:
    """The grid as data: ``columns`` (labels), ``rows`` (prompts) and one cell per prompt x sample x step
    with ``reward`` (the global step's reward for step 1, the local step's for step 2) and ``terms`` (name -> raw value, weight);
    NaN (a failed term) is None."""
    weights = weights or {}
    n = min(max_samples, min((g.group_size for g in groups), default=0))
    columns = [f"sample {s + 1} · {STEP_NAMES[k]}" for s in range(n) for k in (1, 2)]
    cells = []
    for gi, g in enumerate(groups):
        for s in range(n):
            for k, st in ((1, g.steps["global"]), (2, g.steps["local"])):
                r, terms, w = st.reward, st.terms, weights.get(STEP_KEYS[k], {})
                cells.append({
                    "row": gi, "prompt": g.prompt, "sample": s + 1, "step": k,
                    "reward_name": f"{STEP_KEYS[k]} reward", "reward": _num(r[s]),
                    "terms": {t: {"value": _num(v[s]), "weight": w.get(t)} for t, v in terms.items()},
                    "empty_mesh": st.meshes[s] is None,
                })
    return {"columns": columns, "rows": [g.prompt for g in groups], "samples_per_prompt": n, "cells": cells}


def _cell_text(c: dict) -> str:
    r = "failed" if c["reward"] is None else f"{c['reward']:+.2f}"
    lines = [f"{c['reward_name']} {r}"]
    for t, tv in c["terms"].items():
        v = "failed" if tv["value"] is None else f"{tv['value']:+.2f}"
        w = "" if tv["weight"] in (None, 1, 1.0) else f" ×{tv['weight']:g}"
        lines.append(f"{t} {v}{w}")
    if c["empty_mesh"]:
        lines.append("(empty mesh)")
    return "\n".join(lines)


def _with_grid_frame(mesh: Any) -> Any:
    """The mesh plus thin edges of the [-0.5, 0.5]^3 grid box, so renders (which fit each mesh to the view)
    still show where in the grid the shape sits and how big it is."""
    import trimesh

    t, edges = 0.012, []
    for axis in range(3):
        for a in (-0.5, 0.5):
            for b in (-0.5, 0.5):
                extents = [t, t, t]
                extents[axis] = 1.0 + t
                centre = [a, b]
                centre.insert(axis, 0.0)
                edges.append(trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(centre)))
    return trimesh.util.concatenate(edges + ([mesh] if mesh is not None else []))


def _render_tiles(groups: Sequence[Any], n: int, size: int) -> dict[tuple[int, int, int], Any] | None:
    """(row, sample, step) -> image, one 3/4 view per mesh; None when rendering is unavailable."""
    try:
        from rewardkit.render import Renderer, get_protocol

        protocol = get_protocol("35:25", size=size)
        out = {}
        with Renderer(size=size) as r:
            for gi, g in enumerate(groups):
                for s in range(n):
                    for k, m in ((1, g.steps["global"].meshes[s]), (2, g.steps["local"].meshes[s])):
                        out[(gi, s, k)] = r.render(_with_grid_frame(m), protocol, modes=("geometry",))["geometry"][0]
        return out
    except Exception as exc:  # renders are a report artifact; the run goes on
        log.warning("rendering samples failed (%s); drawing voxel plots instead", exc)
        return None


def plot_sample_grid(groups: Sequence[Any], path: str | Path, *, max_samples: int = 4, render_size: int = 160,
                     weights: dict[str, dict[str, float]] | None = None, title: str = "", render: bool = True) -> dict:
    """Draw the grid (see module docstring) to ``path``; returns :func:`sample_cells`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = sample_cells(groups, max_samples, weights)
    n, rows = data["samples_per_prompt"], len(groups)
    if n == 0 or rows == 0:
        return data
    tiles = _render_tiles(groups, n, render_size) if render else None
    n_terms = max(len(c["terms"]) for c in data["cells"])
    cell_w, img_h, text_h = 1.75, 1.75, 0.12 + 0.15 * (n_terms + 1)
    fig_h = 0.75 + rows * (img_h + text_h)
    fig = plt.figure(figsize=(0.9 + cell_w * 2 * n, fig_h))
    gs = fig.add_gridspec(rows, 2 * n, left=0.9 / (0.9 + cell_w * 2 * n), right=0.995, top=1 - 0.62 / fig_h,
                          bottom=(text_h + 0.02) / fig_h, wspace=0.06, hspace=text_h / img_h + 0.05)
    by_key = {(c["row"], c["sample"] - 1, c["step"]): c for c in data["cells"]}
    for gi, g in enumerate(groups):
        for s in range(n):
            for k in (1, 2):
                col = 2 * s + (k - 1)
                c = by_key[(gi, s, k)]
                if tiles is not None:
                    ax = fig.add_subplot(gs[gi, col])
                    ax.imshow(np.asarray(tiles[(gi, s, k)]))
                    ax.set_xticks([]), ax.set_yticks([])
                else:
                    ax = fig.add_subplot(gs[gi, col], projection="3d")
                    m = g.steps[STEP_KEYS[k]].meshes[s]
                    if m is not None and "occupancy" in getattr(m, "metadata", {}):
                        ax.voxels(np.asarray(m.metadata["occupancy"]).transpose(0, 2, 1))
                    ax.set_axis_off()
                for side in ("left", "right", "top", "bottom"):
                    if side in getattr(ax, "spines", {}):
                        ax.spines[side].set_color(STEP_COLOURS[k])
                        ax.spines[side].set_linewidth(1.5)
                text = getattr(ax, "text2D", ax.text)  # 3D axes place screen text with text2D
                text(0.5, -0.03, _cell_text(c), transform=ax.transAxes, ha="center", va="top", fontsize=6.8,
                        family="monospace", color="0.1")
                if gi == 0:
                    ax.set_title(f"sample {s + 1}\n{STEP_NAMES[k]}", fontsize=8, color=STEP_COLOURS[k])
                if col == 0:
                    text(-0.08, 0.5, f'"{g.prompt}"', transform=ax.transAxes, rotation=90, ha="right", va="center",
                            fontsize=9, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / fig_h, va="top")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return data
