"""A small, real preference data set for the reward-model tests and benchmark.

Meshes are trimesh primitives rendered with ``rewardkit.render`` (small images, few views). Each prompt
``"a <colour> <shape>"`` has four candidates::

    A  right colour, smooth surface      B  right colour, noisy surface (vertex noise)
    C  wrong colour, smooth surface      D  wrong colour, the same noisy surface as B

and all six pairs, answered by a rule-based annotator for both questions:

    global (structure): smooth beats noisy; equal geometry is a tie   -> A-B, C-D, A-D, B-C decided
    local  (texture):   right colour beats wrong; equal colour a tie  -> A-C, B-D, A-D, B-C decided

A-C and B-D differ only in texture, A-B and C-D only in geometry: they are also written as probe pairs
(``probes.parquet``: pair_id, differs_in) for the disentanglement check. One extra ``both_bad`` answer
per question is added to check it is kept in the tables but left out of training.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import trimesh

from rewardkit.data.tables import write_table

COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (225, 200, 40)}
SHAPES = ("sphere", "box", "cylinder", "cone", "capsule", "torus")
VARIANTS = ("", "tall ")


def _primitive(shape: str) -> trimesh.Trimesh:
    if shape == "sphere":
        m = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    elif shape == "box":
        m = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    elif shape == "cylinder":
        m = trimesh.creation.cylinder(radius=0.4, height=0.9, sections=48)
    elif shape == "cone":
        m = trimesh.creation.cone(radius=0.5, height=0.9, sections=48)
    elif shape == "capsule":
        m = trimesh.creation.capsule(height=0.6, radius=0.3, count=[24, 24])
    elif shape == "torus":
        m = trimesh.creation.torus(major_radius=0.4, minor_radius=0.15, major_sections=48, minor_sections=24)
    else:  # pragma: no cover
        raise ValueError(shape)
    # Dense enough that vertex noise shows on flat faces too.
    v, f = trimesh.remesh.subdivide_to_size(m.vertices, m.faces, max_edge=0.06, max_iter=8)
    return trimesh.Trimesh(v, f, process=True)


def _noisy(mesh: trimesh.Trimesh, amount: float, seed: int) -> trimesh.Trimesh:
    rng = np.random.default_rng(seed)
    m = mesh.copy()
    m.vertices = m.vertices + m.vertex_normals * rng.normal(0.0, amount, size=(len(m.vertices), 1))
    return m


def _coloured(mesh: trimesh.Trimesh, rgb: tuple[int, int, int]) -> trimesh.Trimesh:
    m = mesh.copy()
    m.visual = trimesh.visual.ColorVisuals(m, face_colors=np.tile([*rgb, 255], (len(m.faces), 1)).astype(np.uint8))
    return m


def make_preference_dataset(
    root: str | Path,
    *,
    n_prompts: int = 48,
    size: int = 64,
    cameras: str = "0:20,180:20",
    modes: tuple[str, ...] = ("rgb", "geometry"),
    noise: float = 0.025,
    seed: int = 0,
) -> dict[str, Path]:
    """Render the data set into ``root`` and write items/pairs/preferences/probes parquet files.

    ``render_dir`` values are relative to ``root`` (where the items table lives).
    """
    from rewardkit.io import from_trimesh
    from rewardkit.render import Renderer, get_protocol, render_to_dir

    root = Path(root)
    rng = np.random.default_rng(seed)
    protocol = get_protocol(cameras, size=size)
    combos = [(v, c, s) for v in VARIANTS for c in COLOURS for s in SHAPES][:n_prompts]
    items, pairs, prefs, probes = [], [], [], []
    base_cache: dict[tuple[str, str], trimesh.Trimesh] = {}
    with Renderer(size=size) as renderer:
        for pi, (variant, colour, shape) in enumerate(combos):
            prompt_id = f"p{pi:03d}"
            prompt = f"a {variant}{colour} {shape}"
            key = (variant, shape)
            if key not in base_cache:
                m = _primitive(shape)
                if variant == "tall ":
                    m.apply_scale((1.0, 1.7, 1.0))
                base_cache[key] = m
            smooth = base_cache[key]
            rough = _noisy(smooth, noise, seed * 100_003 + pi)
            wrong = rng.choice([c for c in COLOURS if c != colour])
            spec = {"A": (colour, smooth), "B": (colour, rough), "C": (wrong, smooth), "D": (wrong, rough)}
            for tag, (col, geom) in spec.items():
                item_id = f"{prompt_id}-{tag}"
                rel = Path("renders") / item_id
                render_to_dir(from_trimesh(_coloured(geom, COLOURS[col]), name=item_id), root / rel, protocol=protocol,
                              modes=modes, renderer=renderer, grid=False)
                items.append({"item_id": item_id, "prompt_id": prompt_id, "prompt": prompt,
                              "mesh_path": f"<procedural>/{item_id}", "mesh_sha256": "", "generator": "procedural",
                              "seed": seed, "render_dir": str(rel)})
            for x, y in itertools.combinations("ABCD", 2):
                a, b = (x, y) if rng.random() < 0.5 else (y, x)  # randomized A/B order, as the sampler does
                pair_id = f"{prompt_id}-{a}{b}"
                pairs.append({"pair_id": pair_id, "prompt_id": prompt_id, "item_a": f"{prompt_id}-{a}",
                              "item_b": f"{prompt_id}-{b}"})
                smooth_a, smooth_b = a in "AC", b in "AC"
                right_a, right_b = a in "AB", b in "AB"
                g = "tie" if smooth_a == smooth_b else ("a" if smooth_a else "b")
                loc = "tie" if right_a == right_b else ("a" if right_a else "b")
                for question, label in (("global", g), ("local", loc)):
                    prefs.append({"pair_id": pair_id, "question": question, "label": label, "annotator": "rule",
                                  "lead_time_s": 1.0, "created_at": "2026-01-01T00:00:00Z", "source": "synthetic"})
                if {x, y} in ({"A", "C"}, {"B", "D"}):
                    probes.append({"pair_id": pair_id, "differs_in": "texture"})
                elif {x, y} in ({"A", "B"}, {"C", "D"}):
                    probes.append({"pair_id": pair_id, "differs_in": "geometry"})
    for question in ("global", "local"):
        prefs.append({"pair_id": pairs[0]["pair_id"], "question": question, "label": "both_bad", "annotator": "rule2",
                      "lead_time_s": 2.0, "created_at": "2026-01-01T00:00:00Z", "source": "synthetic"})
    paths = {"root": root, "items": root / "items.parquet", "pairs": root / "pairs.parquet",
             "preferences": root / "preferences.parquet", "probes": root / "probes.parquet"}
    write_table(pl.DataFrame(items), paths["items"], "items")
    write_table(pl.DataFrame(pairs), paths["pairs"], "pairs")
    write_table(pl.DataFrame(prefs), paths["preferences"], "preferences")
    pl.DataFrame(probes).write_parquet(paths["probes"])
    return paths
