"""Procedural prompted objects built from trimesh primitives.

An object is described by an :class:`ObjectSpec` (category, colour, material, shape variant, seed and
the prompt that says all of that) and built as a list of :class:`Part` s: watertight primitives, each
mapped to the *main* or the *secondary* tile of the object's texture atlas. :func:`assemble` merges the
parts into one textured ``trimesh.Trimesh`` (triplanar UVs into the atlas, a PBR material), which is
what gets written as GLB. +Y is up; sizes are in metres, roughly (the loader normalizes them anyway).

Everything is a pure function of the spec (its ``seed`` included), so the same spec gives the same
vertices and the same texels on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import trimesh
from PIL import Image

from rewardkit.demo import textures as tx

CATEGORIES = ("chair", "table", "mug", "lamp", "bottle", "car")


@dataclass(frozen=True)
class ObjectSpec:
    """A demo object to build: category, colour, material, accent, variant and seed (the prompt is made
    from them)."""
    category: str
    colour: str
    material: str
    accent: str
    variant: str
    seed: int

    @property
    def prompt(self) -> str:
        return prompt_for(self)


@dataclass
class Part:
    """One named part of a demo object: its mesh, which texture tile it uses and its removal group."""
    name: str
    mesh: trimesh.Trimesh
    tile: str = "main"  # "main" | "secondary"
    group: str = ""  # parts of one group are removed together by the missing-part degradation
    meta: dict = field(default_factory=dict)


# category -> (variant -> phrase used in the prompt)
VARIANTS: dict[str, dict[str, str]] = {
    "chair": {"four_legs": "chair with four legs", "armrests": "chair with armrests"},
    "table": {"four_legs": "table with four legs", "round": "round table with one leg"},
    "mug": {"handle": "mug with a handle", "tall": "tall mug with a handle"},
    "lamp": {"cone": "lamp with a cone shade", "drum": "lamp with a drum shade"},
    "bottle": {"cap": "bottle with a cap", "slim": "slim bottle with a cap"},
    "car": {"sedan": "car with four wheels", "van": "van with four wheels"},
}

# groups the missing-part degradation may remove, per category
REMOVABLE: dict[str, tuple[str, ...]] = {
    "chair": ("back", "front_legs"),
    "table": ("legs",),
    "mug": ("handle",),
    "lamp": ("shade",),
    "bottle": ("neck",),
    "car": ("wheels", "cabin"),
}


def prompt_for(spec: ObjectSpec) -> str:
    words = f"{spec.colour} {spec.material} {VARIANTS[spec.category][spec.variant]}"
    article = "an" if words[0] in "aeiou" else "a"
    return f"{article} {words}"


def sample_spec(category: str, rng: np.random.Generator) -> ObjectSpec:
    if category not in VARIANTS:
        raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")
    colours = list(tx.COLOURS)
    variants = list(VARIANTS[category])
    accents = list(tx.ACCENTS)
    return ObjectSpec(
        category=category,
        colour=colours[int(rng.integers(len(colours)))],
        material=tx.MATERIALS[int(rng.integers(len(tx.MATERIALS)))],
        accent=accents[int(rng.integers(len(accents)))],
        variant=variants[int(rng.integers(len(variants)))],
        seed=int(rng.integers(0, 2**31 - 1)),
    )


# ----------------------------------------------------------------------------------------- primitives

def _box(extents, center) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(center))


def _cyl(radius, height, center, axis: str = "y", sections: int = 24) -> trimesh.Trimesh:
    m = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)  # along Z
    if axis == "y":
        m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    elif axis == "x":
        m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    m.apply_translation(center)
    return m


def _lathe(profile, center=(0.0, 0.0, 0.0), sections: int = 24) -> trimesh.Trimesh:
    """Revolve ``[(radius, height), ...]`` (starting and ending on the axis) about +Y."""
    m = trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=sections)  # height along Z
    m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    m.apply_translation(center)
    return m


# ----------------------------------------------------------------------------------------- categories

def _chair(spec: ObjectSpec, r: np.random.Generator) -> list[Part]:
    w, d = r.uniform(0.42, 0.55), r.uniform(0.40, 0.52)
    h, t = r.uniform(0.40, 0.50), r.uniform(0.04, 0.06)
    leg = r.uniform(0.025, 0.04)
    round_legs = bool(r.integers(2))
    parts = [Part("seat", _box((w, t, d), (0, h + t / 2, 0)), "main", "seat")]
    for i, (sx, sz) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
        c = (sx * (w / 2 - leg), h / 2, sz * (d / 2 - leg))
        m = _cyl(leg, h, c) if round_legs else _box((2 * leg, h, 2 * leg), c)
        parts.append(Part(f"leg{i}", m, "main", "front_legs" if sz > 0 else "back_legs"))
    bh = r.uniform(0.35, 0.55)
    parts.append(Part("back", _box((w, bh, 0.045), (0, h + t + bh / 2, -d / 2 + 0.0225)), "main", "back"))
    if spec.variant == "armrests":
        for sx in (-1, 1):
            parts.append(Part(f"arm{sx}", _box((0.045, 0.04, d * 0.9), (sx * (w / 2 - 0.0225), h + t + 0.2, 0)),
                              "main", "arms"))
            parts.append(Part(f"armpost{sx}", _box((0.035, 0.2, 0.035), (sx * (w / 2 - 0.0225), h + t + 0.1, d * 0.35)),
                              "main", "arms"))
    return parts


def _table(spec: ObjectSpec, r: np.random.Generator) -> list[Part]:
    h, t = r.uniform(0.68, 0.78), r.uniform(0.04, 0.06)
    if spec.variant == "round":
        rad = r.uniform(0.40, 0.55)
        parts = [Part("top", _cyl(rad, t, (0, h + t / 2, 0), sections=32), "main", "top")]
        parts.append(Part("pedestal", _cyl(r.uniform(0.04, 0.06), h, (0, h / 2, 0)), "main", "legs"))
        parts.append(Part("foot", _cyl(rad * 0.55, 0.04, (0, 0.02, 0)), "secondary", "legs"))
        return parts
    w, d = r.uniform(0.9, 1.3), r.uniform(0.55, 0.8)
    leg = r.uniform(0.03, 0.05)
    parts = [Part("top", _box((w, t, d), (0, h + t / 2, 0)), "main", "top")]
    for i, (sx, sz) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
        parts.append(Part(f"leg{i}", _box((2 * leg, h, 2 * leg), (sx * (w / 2 - leg), h / 2, sz * (d / 2 - leg))),
                          "main", "legs"))
    return parts


def _mug(spec: ObjectSpec, r: np.random.Generator) -> list[Part]:
    rad = r.uniform(0.04, 0.055)
    h = r.uniform(0.09, 0.11) * (1.45 if spec.variant == "tall" else 1.0)
    wall = 0.006
    body = _lathe([(0, 0), (rad, 0), (rad, h), (rad - wall, h), (rad - wall, 0.01), (0, 0.01)], sections=32)
    handle = trimesh.creation.torus(major_radius=h * 0.3, minor_radius=0.009, major_sections=24, minor_sections=10)
    handle.apply_translation((rad + h * 0.12, h * 0.5, 0))
    return [Part("body", body, "main", "body"), Part("handle", handle, "main", "handle")]


def _lamp(spec: ObjectSpec, r: np.random.Generator) -> list[Part]:
    base_r, pole_h = r.uniform(0.10, 0.14), r.uniform(0.35, 0.5)
    parts = [
        Part("base", _cyl(base_r, 0.03, (0, 0.015, 0), sections=32), "secondary", "base"),
        Part("pole", _cyl(0.012, pole_h, (0, 0.03 + pole_h / 2, 0)), "secondary", "pole"),
    ]
    sh = r.uniform(0.16, 0.22)
    bot, top = r.uniform(0.15, 0.2), r.uniform(0.06, 0.09)
    if spec.variant == "drum":
        top = bot * 0.95
    y0 = 0.03 + pole_h - sh * 0.6
    shade = _lathe([(0, 0), (bot, 0), (top, sh), (0, sh)], center=(0, y0, 0), sections=32)
    parts.append(Part("shade", shade, "main", "shade"))
    return parts


def _bottle(spec: ObjectSpec, r: np.random.Generator) -> list[Part]:
    rad = r.uniform(0.04, 0.055) * (0.7 if spec.variant == "slim" else 1.0)
    bh = r.uniform(0.16, 0.22)
    nr, nh = rad * r.uniform(0.3, 0.4), r.uniform(0.05, 0.07)
    shoulder = bh * 0.2
    body = _lathe([(0, 0), (rad, 0), (rad, bh - shoulder), (nr, bh), (0, bh)], sections=32)
    neck = _cyl(nr, nh, (0, bh + nh / 2, 0))
    cap = _cyl(nr * 1.25, 0.025, (0, bh + nh + 0.0125, 0))
    return [Part("body", body, "main", "body"), Part("neck", neck, "main", "neck"),
            Part("cap", cap, "secondary", "neck")]


def _car(spec: ObjectSpec, r: np.random.Generator) -> list[Part]:
    length, width = r.uniform(0.9, 1.2), r.uniform(0.45, 0.55)
    wr = r.uniform(0.1, 0.13)
    bh = r.uniform(0.18, 0.24)
    y0 = wr * 0.9
    parts = [Part("body", _box((length, bh, width), (0, y0 + bh / 2, 0)), "main", "body")]
    if spec.variant == "van":
        cl, ch, cx = length * 0.75, r.uniform(0.22, 0.28), -length * 0.1
    else:
        cl, ch, cx = length * 0.5, r.uniform(0.16, 0.2), -length * 0.05
    parts.append(Part("cabin", _box((cl, ch, width * 0.9), (cx, y0 + bh + ch / 2, 0)), "main", "cabin"))
    for i, (sx, sz) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
        c = (sx * length * 0.32, wr, sz * (width / 2))
        wheel = trimesh.creation.cylinder(radius=wr, height=0.07, sections=24)  # axis Z = across the car
        wheel.apply_translation(c)
        parts.append(Part(f"wheel{i}", wheel, "secondary", "wheels"))
    return parts


BUILDERS = {"chair": _chair, "table": _table, "mug": _mug, "lamp": _lamp, "bottle": _bottle, "car": _car}


def build_parts(spec: ObjectSpec) -> list[Part]:
    """The clean parts of ``spec`` (deterministic in ``spec.seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1]))
    parts = BUILDERS[spec.category](spec, rng)
    # rest on the floor, centred on the vertical axis
    allv = np.concatenate([p.mesh.vertices for p in parts])
    lo, hi = allv.min(0), allv.max(0)
    shift = np.array([-(lo[0] + hi[0]) / 2, -lo[1], -(lo[2] + hi[2]) / 2])
    for p in parts:
        p.mesh.apply_translation(shift)
    return parts


def build_atlas(spec: ObjectSpec, colour: str | None = None) -> np.ndarray:
    """The clean texture atlas of ``spec`` (``colour`` overrides the prompted colour)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2]))
    main = tx.pattern_tile(spec.material, colour or spec.colour, rng)
    return tx.atlas(main, tx.flat_tile(tx.ACCENTS[spec.accent]))


def with_category(spec: ObjectSpec, category: str) -> ObjectSpec:
    """The same colour, material and seed as ``spec`` on another category (first variant)."""
    return replace(spec, category=category, variant=next(iter(VARIANTS[category])))


# ----------------------------------------------------------------------------------------- assembly

def _triplanar_uv(mesh: trimesh.Trimesh, tile: str) -> np.ndarray:
    """UVs for an unmerged mesh: each face projected along its dominant normal axis, fitted to its tile."""
    n_faces = len(mesh.faces)
    axis = np.abs(mesh.face_normals).argmax(axis=1)  # 0, 1, 2
    keep = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # the two axes the face is projected onto
    verts = mesh.vertices[mesh.faces]  # (F, 3, 3)
    rows = np.arange(n_faces)[:, None]
    uv = np.stack([verts[rows, np.arange(3)[None, :], keep[:, [0]]],
                   verts[rows, np.arange(3)[None, :], keep[:, [1]]]], axis=-1)  # (F, 3, 2)
    lo = mesh.bounds[0]
    span = float(np.ptp(mesh.bounds, axis=0).max()) or 1.0
    lo_k = lo[keep]  # (F, 2)
    uv = (uv - lo_k[:, None, :]) / span
    uv = 0.02 + 0.96 * np.clip(uv, 0.0, 1.0)
    uv[..., 0] = uv[..., 0] * 0.5 + (0.0 if tile == "main" else 0.5)
    return uv.reshape(-1, 2)


def assemble(parts: list[Part], atlas: np.ndarray | None, flat_rgb=(200, 200, 200)) -> trimesh.Trimesh:
    """One mesh from ``parts``: textured with ``atlas`` or, when ``atlas`` is None, one flat colour."""
    pieces, uvs = [], []
    for p in parts:
        m = p.mesh.copy()
        m.unmerge_vertices()
        uvs.append(_triplanar_uv(m, p.tile))
        pieces.append(trimesh.Trimesh(vertices=m.vertices, faces=m.faces, process=False))
    mesh = trimesh.util.concatenate(pieces)
    if atlas is None:
        mesh.visual = trimesh.visual.ColorVisuals(
            mesh, face_colors=np.tile(np.array([*flat_rgb, 255], dtype=np.uint8), (len(mesh.faces), 1)))
        return mesh
    uv = np.concatenate(uvs)
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(atlas), metallicFactor=0.0, roughnessFactor=0.7, doubleSided=True)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return mesh
