"""Controlled degradations of a clean demo object.

Geometry degradations change the parts and leave the texture atlas alone; texture degradations change
the atlas (or remove it) and leave the parts alone. That split is what lets the stand-in annotator
answer the global question from geometry alone and the local question from texture alone, and what the
two reward stages are expected to pick up (docs/architecture.md, "Two reward stages").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import trimesh

from rewardkit.demo import textures as tx
from rewardkit.demo.objects import (
    CATEGORIES,
    REMOVABLE,
    ObjectSpec,
    Part,
    build_atlas,
    build_parts,
    with_category,
)

GEOMETRY = ("vertex_noise", "missing_part", "extra_part", "wrong_proportions", "wrong_category")
TEXTURE = ("wrong_colour", "texture_noise", "blur", "texture_removed")
# colour changes that keep the texture's pattern (what the real-mesh transfer report applies to real textures,
# rewardkit.eval.transfer): its luminance only, or its hue turned; not in the demo's default TEXTURE list
COLOUR_SHIFTS = ("texture_grey", "hue_rotated")
DEGRADATIONS = GEOMETRY + TEXTURE + COLOUR_SHIFTS
HUE_RANGE = (90.0, 270.0)  # hue_rotated: degrees, drawn uniformly (a far hue either way round the wheel)



def check_known(values: Sequence[str], known: Sequence[str], what: str) -> None:
    """ValueError naming the first of ``values`` that is not in ``known`` (``what``: what the values are)."""
    for v in values:
        if v not in known:
            raise ValueError(f"{what}: unknown {v!r}; known: {list(known)}")

def kind_of(degradation: str) -> str:
    """``"none"``, ``"geometry"``, ``"texture"`` or ``"both"`` (for ``"geo+tex"`` combinations)."""
    if degradation in ("", "none", "clean"):
        return "none"
    names = degradation.split("+")
    kinds = {"geometry" if n in GEOMETRY else "texture" if n in TEXTURE + COLOUR_SHIFTS else "?" for n in names}
    if "?" in kinds:
        raise ValueError(f"unknown degradation {degradation!r}; known: {DEGRADATIONS}")
    return kinds.pop() if len(kinds) == 1 else "both"


def _extent(parts: list[Part]) -> float:
    v = np.concatenate([p.mesh.vertices for p in parts])
    return float(np.ptp(v, axis=0).max())


def _copy(parts: list[Part]) -> list[Part]:
    return [Part(p.name, p.mesh.copy(), p.tile, p.group, dict(p.meta)) for p in parts]


def vertex_noise(parts: list[Part], rng: np.random.Generator, sigma: float = 0.015, edge: float = 0.05,
                 max_faces: int = 3000) -> list[Part]:
    """Subdivide every part (to edges of about ``edge * extent``, at most ``max_faces`` faces a part) and
    push its vertices along their normals by N(0, sigma * extent)."""
    ext = _extent(parts)
    out = []
    for p in _copy(parts):
        m = p.mesh
        for _ in range(5):
            if m.edges_unique_length.mean() <= edge * ext or 4 * len(m.faces) > max_faces:
                break
            m = m.subdivide()
        m = trimesh.Trimesh(m.vertices, m.faces, process=True)
        m.vertices = m.vertices + m.vertex_normals * rng.normal(0.0, sigma * ext, size=(len(m.vertices), 1))
        out.append(Part(p.name, m, p.tile, p.group, p.meta))
    return out


def missing_part(parts: list[Part], category: str, rng: np.random.Generator) -> list[Part]:
    groups = [g for g in REMOVABLE[category] if any(p.group == g for p in parts)]
    gone = groups[int(rng.integers(len(groups)))]
    return [p for p in _copy(parts) if p.group != gone]


def extra_part(parts: list[Part], rng: np.random.Generator, size: float = 0.32) -> list[Part]:
    """A sphere or box about a third of the object's size stuck on its upper half."""
    out = _copy(parts)
    ext = _extent(parts)
    v = np.concatenate([p.mesh.vertices for p in parts if p.tile == "main"] or [p.mesh.vertices for p in parts])
    upper = v[v[:, 1] >= np.median(v[:, 1])]
    s = size * ext
    centre = upper[int(rng.integers(len(upper)))]
    out_dir = centre - v.mean(axis=0)
    out_dir[1] = max(out_dir[1], 0.0)
    norm = float(np.linalg.norm(out_dir))
    if norm > 1e-9:  # stick out of the object (half outside), not hide inside it
        centre = centre + out_dir / norm * (0.5 * s)
    if rng.integers(2):
        m = trimesh.creation.icosphere(subdivisions=2, radius=s / 2)
    else:
        m = trimesh.creation.box(extents=(s, s, s))
        m.apply_transform(trimesh.transformations.rotation_matrix(float(rng.uniform(0, np.pi / 2)), [0, 1, 0]))
    m.apply_translation(centre)
    out.append(Part("extra", m, "main", "extra"))
    return out


def wrong_proportions(parts: list[Part], rng: np.random.Generator) -> list[Part]:
    """Stretch or squash the whole object along one axis (x2.2 or x0.45)."""
    axis = int(rng.choice([0, 1]))
    factor = 2.2 if rng.integers(2) else 0.45
    scale = np.ones(3)
    scale[axis] = factor
    out = _copy(parts)
    for p in out:
        p.mesh.apply_transform(np.diag([*scale, 1.0]))
    return out


def wrong_category(spec: ObjectSpec, rng: np.random.Generator) -> tuple[list[Part], str]:
    others = [c for c in CATEGORIES if c != spec.category]
    other = others[int(rng.integers(len(others)))]
    return build_parts(with_category(spec, other)), other


def degrade_geometry(name: str, parts: list[Part], spec: ObjectSpec, rng: np.random.Generator) -> list[Part]:
    if name == "vertex_noise":
        return vertex_noise(parts, rng)
    if name == "missing_part":
        return missing_part(parts, spec.category, rng)
    if name == "extra_part":
        return extra_part(parts, rng)
    if name == "wrong_proportions":
        return wrong_proportions(parts, rng)
    if name == "wrong_category":
        return wrong_category(spec, rng)[0]
    raise ValueError(f"unknown geometry degradation {name!r}; known: {GEOMETRY}")


def degrade_texture(name: str, atlas: np.ndarray, spec: ObjectSpec, rng: np.random.Generator) -> np.ndarray | None:
    """The degraded atlas; ``None`` means the texture is removed (the mesh gets one flat grey)."""
    main, secondary = atlas[:, : tx.TILE], atlas[:, tx.TILE:]
    if name == "wrong_colour":
        return build_atlas(spec, colour=tx.far_colour(spec.colour, rng))
    if name == "texture_noise":
        return tx.atlas(tx.noise_tile(main, rng), secondary)
    if name == "blur":
        return tx.atlas(tx.blur_tile(main), secondary)
    if name == "texture_removed":
        return None
    if name == "texture_grey":
        return tx.atlas(tx.grey(main), secondary)
    if name == "hue_rotated":
        return tx.atlas(tx.hue_rotate(main, float(rng.uniform(*HUE_RANGE))), secondary)
    raise ValueError(f"unknown texture degradation {name!r}; known: {TEXTURE + COLOUR_SHIFTS}")
