"""The demo data set: prompted objects, a clean candidate and controlled degradations per prompt, as GLB.

:func:`generate` writes, under ``out_dir``:

- ``meshes/<item_id>.glb``: one file per candidate;
- ``items.parquet``: the ``items`` table (``rewardkit.data.tables``); ``render_dir`` is left empty for
  the render stage to fill;
- ``candidates.parquet``: the sidecar the items schema has no room for: ``item_id``, ``prompt_id``,
  ``category``, ``colour``, ``material``, ``variant``, ``degradation`` (``clean``, one name, or
  ``geometry+texture``), ``kind`` (``none`` | ``geometry`` | ``texture`` | ``both``),
  ``geometry_degradation`` and ``texture_degradation`` (``none`` when absent) and ``split``
  (``train`` | ``holdout``: held-out prompts never get pairs or labels, they are for evaluation).

Every candidate of a prompt is built from the same :class:`ObjectSpec`, so a geometry degradation has
exactly the clean texture and a texture degradation exactly the clean shape.

Two candidate designs per prompt (``DemoConfig.design``):

- ``single``: the clean candidate, one candidate per geometry and per texture degradation, plus ``mixed``
  candidates with one of each. Held-out prompts always use it: it is the evaluation protocol (clean against
  each degradation type).
- ``factorial`` (training prompts only): every combination of ``{none} + factorial_geometry`` geometry
  degradations with ``{none} + factorial_texture`` texture degradations, the types rotated over the prompts
  so each is used equally often. Whether a candidate's texture is degraded is then *independent* of whether
  its shape is, so a reward model cannot learn one question's answer from the other kind's cue. Under
  ``single`` it can: a candidate with a degraded shape is rarely also texture-degraded (5 of 7 are clean in
  texture, against 1 of 5 without a shape degradation), and a local model that sees shape learns "shape looks
  degraded, so texture is fine" (measured: docs/reward-models.md, "Where the geometry bias comes from").

``DemoConfig.real`` adds real meshes (:mod:`rewardkit.demo.real`: scans from an installed package, with the
demo's textures and degradations, factorial design) to the training prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import trimesh

from rewardkit.data.candidates import CANDIDATES_SCHEMA, read_candidates  # noqa: F401 (re-exported)
from rewardkit.data.tables import write_table
from rewardkit.demo import degrade, real
from rewardkit.demo.objects import CATEGORIES, ObjectSpec, assemble, build_atlas, build_parts, sample_spec

GENERATOR_NAME = "rewardkit-demo"
DESIGNS = ("single", "factorial")


@dataclass
class DemoConfig:
    """What :func:`generate` makes. Every field is a ``generate`` param in params.yaml."""

    prompts_per_category: int = 8  # training prompts (pairs and labels are made for these)
    holdout_per_category: int = 2  # held-out prompts (candidates only; used by evaluation)
    categories: Sequence[str] = CATEGORIES
    geometry: Sequence[str] = degrade.GEOMETRY  # geometry degradations, one candidate each
    texture: Sequence[str] = degrade.TEXTURE  # texture degradations, one candidate each
    mixed: int = 2  # extra candidates with one geometry and one texture degradation together (design single)
    design: str = "single"  # training prompts: single | factorial (held-out prompts: always single)
    factorial_geometry: int = 2  # design factorial: geometry degradation types per prompt
    factorial_texture: int = 2  # design factorial: texture degradation types per prompt
    seed: int = 0
    real: real.RealConfig | None = None  # real meshes among the training prompts (rewardkit.demo.real)

    def __post_init__(self) -> None:
        degrade.check_known(self.categories, CATEGORIES, "category")
        degrade.check_known(self.geometry, degrade.GEOMETRY, "geometry degradation")
        degrade.check_known(self.texture, degrade.TEXTURE, "texture degradation")
        if self.mixed and not (self.geometry and self.texture):
            raise ValueError("mixed candidates need at least one geometry and one texture degradation")
        if self.design not in DESIGNS:
            raise ValueError(f"unknown design {self.design!r}; known: {DESIGNS}")
        if self.design == "factorial":
            for name, k, kinds in (("factorial_geometry", self.factorial_geometry, self.geometry),
                                   ("factorial_texture", self.factorial_texture, self.texture)):
                if not 0 <= k <= len(kinds):
                    raise ValueError(f"{name} must be between 0 and the {len(kinds)} degradation types listed, got {k}")


@dataclass
class Candidate:
    """One generated demo candidate: its object spec, the geometry/texture degradations applied and the mesh."""
    item_id: str
    spec: ObjectSpec
    degradation: str
    geometry_degradation: str
    texture_degradation: str
    mesh: trimesh.Trimesh

    @property
    def kind(self) -> str:
        return degrade.kind_of(self.degradation)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def prompt_specs(cfg: DemoConfig) -> list[tuple[str, ObjectSpec, str]]:
    """``(prompt_id, spec, split)`` for every prompt, in a fixed order, deterministic in ``cfg.seed``."""
    out = []
    n = cfg.prompts_per_category + cfg.holdout_per_category
    for cat in cfg.categories:
        seen: set[str] = set()
        k, tries = 0, 0
        while k < n:
            spec = sample_spec(cat, _rng(cfg.seed, CATEGORIES.index(cat), tries))
            tries += 1
            if spec.prompt in seen and tries < 50 * n:  # distinct prompts where the vocabulary allows
                continue
            seen.add(spec.prompt)
            split = "train" if k < cfg.prompts_per_category else "holdout"
            out.append((f"{cat}-{k:03d}", spec, split))
            k += 1
    return out


def make_candidate(spec: ObjectSpec, geometry: str = "none", texture: str = "none",
                   rng: np.random.Generator | None = None, item_id: str = "") -> Candidate:
    """One candidate of ``spec`` with at most one geometry and one texture degradation."""
    rng = rng if rng is not None else _rng(spec.seed, 3)
    parts = build_parts(spec)
    atlas = build_atlas(spec)
    if geometry != "none":
        parts = degrade.degrade_geometry(geometry, parts, spec, rng)
    if texture != "none":
        atlas = degrade.degrade_texture(texture, atlas, spec, rng)
    names = [n for n in (geometry, texture) if n != "none"]
    return Candidate(item_id, spec, "+".join(names) or "clean", geometry, texture, assemble(parts, atlas))


def _rotated(kinds: Sequence[str], k: int, index: int) -> list[str]:
    """``k`` of ``kinds``, the window starting at ``index * k`` (wrapping): over consecutive prompts each kind
    is picked equally often."""
    return [kinds[(index * k + j) % len(kinds)] for j in range(k)] if kinds else []


def candidate_plan(cfg: DemoConfig, spec_seed: int, split: str = "holdout", index: int = 0) -> list[tuple[str, str]]:
    """``(geometry, texture)`` degradation names for the candidates of one prompt (clean first).

    ``index`` is the prompt's position within its category (it rotates the factorial design's types)."""
    if cfg.design == "factorial" and split == "train":
        geometry = ["none", *_rotated(cfg.geometry, cfg.factorial_geometry, index)]
        texture = ["none", *_rotated(cfg.texture, cfg.factorial_texture, index)]
        return [(g, t) for g in geometry for t in texture]
    plan = [("none", "none")]
    plan += [(g, "none") for g in cfg.geometry]
    plan += [("none", t) for t in cfg.texture]
    rng = _rng(spec_seed, 4)
    combos = [(g, t) for g in cfg.geometry for t in cfg.texture]
    if cfg.mixed and combos:
        picks = rng.choice(len(combos), size=min(cfg.mixed, len(combos)), replace=False)
        plan += [combos[int(i)] for i in sorted(picks)]
    return plan


def iter_candidates(cfg: DemoConfig) -> Iterator[tuple[str, str, Candidate]]:
    """``(prompt_id, split, candidate)`` for the whole data set."""
    for prompt_id, spec, split in prompt_specs(cfg):
        for j, (g, t) in enumerate(candidate_plan(cfg, spec.seed, split, int(prompt_id.rsplit("-", 1)[1]))):
            name = "+".join(n for n in (g, t) if n != "none") or "clean"
            yield prompt_id, split, make_candidate(spec, g, t, _rng(spec.seed, 5, j), f"{prompt_id}-{name}")


def glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    return mesh.export(file_type="glb")


def generate(cfg: DemoConfig, out_dir: str | Path, progress: Callable[[int, int], None] | None = None,
             ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Write the demo data set under ``out_dir``; return ``(items, candidates)``."""
    out_dir = Path(out_dir)
    mesh_dir = out_dir / "meshes"
    mesh_dir.mkdir(parents=True, exist_ok=True)
    for old in mesh_dir.glob("*.glb"):
        old.unlink()
    specs = prompt_specs(cfg)
    total = sum(len(candidate_plan(cfg, spec.seed, split, int(pid.rsplit("-", 1)[1]))) for pid, spec, split in specs)
    total += real.count(cfg.real) if cfg.real is not None else 0
    items, cands = [], []

    def add(prompt_id: str, split: str, cand, prompt: str, seed: int, category: str, colour: str, material: str,
            variant: str) -> None:
        data = glb_bytes(cand.mesh)
        path = mesh_dir / f"{cand.item_id}.glb"
        path.write_bytes(data)
        items.append({
            "item_id": cand.item_id, "prompt_id": prompt_id, "prompt": prompt, "mesh_path": str(path),
            "mesh_sha256": hashlib.sha256(data).hexdigest(), "generator": GENERATOR_NAME, "seed": seed,
            "render_dir": "",
        })
        cands.append({
            "item_id": cand.item_id, "prompt_id": prompt_id, "category": category, "colour": colour,
            "material": material, "variant": variant, "degradation": cand.degradation,
            "kind": cand.kind, "geometry_degradation": cand.geometry_degradation,
            "texture_degradation": cand.texture_degradation, "split": split,
        })
        if progress is not None:
            progress(len(items), total)

    for prompt_id, split, cand in iter_candidates(cfg):
        s = cand.spec
        add(prompt_id, split, cand, s.prompt, s.seed, s.category, s.colour, s.material, s.variant)
    if cfg.real is not None:
        for prompt_id, split, rc in real.iter_candidates(cfg.real):
            add(prompt_id, split, rc, rc.prompt, rc.seed, rc.category, rc.colour, rc.material, rc.variant)
    items_df = pl.DataFrame(items)
    cands_df = pl.DataFrame(cands, schema=CANDIDATES_SCHEMA)
    write_table(items_df, out_dir / "items.parquet", "items")
    cands_df.write_parquet(out_dir / "candidates.parquet")
    return items_df, cands_df

