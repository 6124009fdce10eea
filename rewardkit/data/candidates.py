"""The ``candidates`` sidecar table, and reading a lab's own generations from a ``candidates.csv``.

The ``items`` table has a fixed schema; what a pipeline also needs to know per candidate lives in the
*candidates* table: ``item_id``, ``prompt_id``, the demo's object attributes (``category``, ``colour``,
``material``, ``variant``; null for other data), ``degradation`` (``clean``, a name, ``geo+tex``, or
``unknown``), ``kind`` (``none`` | ``geometry`` | ``texture`` | ``both`` | ``unknown``),
``geometry_degradation`` / ``texture_degradation`` (``none`` when absent, null when not known) and
``split`` (``train`` | ``holdout``: held-out prompts get no pairs and no labels; ``evaluate`` scores them).

:func:`read_generations` turns a folder of your own generations into both tables. The folder holds the
meshes and a ``candidates.csv`` with one row per candidate:

========================  =====================================================================
column                    meaning
========================  =====================================================================
``mesh_path``             the mesh (GLB/glTF, OBJ, PLY, STL, OFF), relative to the CSV's folder
``prompt``                the prompt it was generated for
``item_id`` (optional)    a unique id (default: ``<prompt_id>-<file stem>``)
``prompt_id`` (optional)  candidates of one prompt share it (default: a hash of the prompt text)
``generator``, ``seed``   optional provenance
``split`` (optional)      ``train`` | ``holdout`` (default: ``holdout_fraction`` of the prompts,
                          chosen by a seeded hash of the prompt id)
``geometry_degradation``, optional: what is known to be wrong with the candidate (``none`` for a
``texture_degradation``   clean one). With both, the demo's stand-in annotator can label pairs and
                          ``evaluate`` measures clean-vs-degraded accuracy, as on the demo.
========================  =====================================================================
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from rewardkit.data.tables import conform

CANDIDATES_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "prompt_id": pl.Utf8,
    "category": pl.Utf8,
    "colour": pl.Utf8,
    "material": pl.Utf8,
    "variant": pl.Utf8,
    "degradation": pl.Utf8,
    "kind": pl.Utf8,
    "geometry_degradation": pl.Utf8,
    "texture_degradation": pl.Utf8,
    "split": pl.Utf8,
}

SPLITS = ("train", "holdout")
MANIFEST_NAME = "candidates.csv"
REQUIRED_COLUMNS = ("mesh_path", "prompt")


def read_candidates(path: str | Path) -> pl.DataFrame:
    """The candidates table at ``path``, with exactly :data:`CANDIDATES_SCHEMA`'s columns."""
    df = pl.read_parquet(path)
    missing = [c for c in CANDIDATES_SCHEMA if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: candidates table is missing columns {missing}")
    return df.select([pl.col(c).cast(t) for c, t in CANDIDATES_SCHEMA.items()])


def prompt_id_of(prompt: str) -> str:
    """A stable id for a prompt text (equal prompts group together)."""
    return "q-" + hashlib.sha256(prompt.strip().encode()).hexdigest()[:12]


def _is_clean(name: str | None) -> bool:
    return name in ("", "none", "clean")


def degradation_of(geometry: str | None, texture: str | None) -> tuple[str, str]:
    """``(degradation, kind)`` from the two known degradations; ``("unknown", "unknown")`` if either is null."""
    if geometry is None or texture is None:
        return "unknown", "unknown"
    g, t = not _is_clean(geometry), not _is_clean(texture)
    if g and t:
        return f"{geometry}+{texture}", "both"
    if g:
        return geometry, "geometry"
    if t:
        return texture, "texture"
    return "clean", "none"


def holdout_split(prompt_id: str, fraction: float, seed: int = 0) -> str:
    """``holdout`` for a seeded-hash ``fraction`` of prompt ids, else ``train`` (stable as prompts are added)."""
    h = int(hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "holdout" if h < fraction else "train"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (so tables move with the repo)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def read_generations(folder: str | Path, *, holdout_fraction: float = 0.2, seed: int = 0,
                     generator: str = "unknown") -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(items, candidates)`` for the generations in ``folder`` (its ``candidates.csv`` and meshes).

    Every problem of the CSV is collected and raised at once as one ``ValueError`` naming the file, the
    row and the problem (a missing mesh, a duplicate ``item_id``, an unknown ``split``), so one pass
    fixes them all. ``render_dir`` is left empty for the render stage.
    """
    folder = Path(folder)
    csv = folder / MANIFEST_NAME
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: no {MANIFEST_NAME} (columns: mesh_path, prompt; see rewardkit.data.candidates)")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    table = pl.read_csv(csv, infer_schema_length=0)  # every column as text
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{csv}: missing columns {missing} (has {table.columns})")
    if table.height == 0:
        raise ValueError(f"{csv}: no rows")
    problems: list[str] = []
    items, cands, seen = [], [], {}
    for n, r in enumerate(table.iter_rows(named=True), start=2):  # row 1 is the header
        where = f"{csv}:{n}"
        prompt = (r.get("prompt") or "").strip()
        if not prompt:
            problems.append(f"{where}: empty prompt")
            continue
        rel = (r.get("mesh_path") or "").strip()
        mesh = Path(rel) if Path(rel).is_absolute() else folder / rel
        if not rel or not mesh.is_file():
            problems.append(f"{where}: mesh not found: {mesh}")
            continue
        prompt_id = (r.get("prompt_id") or "").strip() or prompt_id_of(prompt)
        item_id = (r.get("item_id") or "").strip() or f"{prompt_id}-{mesh.stem}"
        if item_id in seen:
            problems.append(f"{where}: duplicate item_id {item_id!r} (also row {seen[item_id]})")
            continue
        seen[item_id] = n
        split = (r.get("split") or "").strip() or holdout_split(prompt_id, holdout_fraction, seed)
        if split not in SPLITS:
            problems.append(f"{where}: split must be one of {SPLITS}, not {split!r}")
            continue
        seed_text = (r.get("seed") or "").strip()
        try:
            item_seed = int(seed_text) if seed_text else None
        except ValueError:
            problems.append(f"{where}: seed must be an integer, not {seed_text!r}")
            continue
        geo = (r.get("geometry_degradation") or "").strip() or None
        tex = (r.get("texture_degradation") or "").strip() or None
        degradation, kind = degradation_of(geo, tex)
        items.append({
            "item_id": item_id, "prompt_id": prompt_id, "prompt": prompt, "mesh_path": _display(mesh),
            "mesh_sha256": _sha256(mesh), "generator": (r.get("generator") or "").strip() or generator,
            "seed": item_seed, "render_dir": "",
        })
        cands.append({
            "item_id": item_id, "prompt_id": prompt_id, "category": None, "colour": None, "material": None,
            "variant": None, "degradation": degradation, "kind": kind, "geometry_degradation": geo,
            "texture_degradation": tex, "split": split,
        })
    if problems:
        raise ValueError(f"{csv}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    split_of = {}
    for c in cands:  # one prompt, one split
        if split_of.setdefault(c["prompt_id"], c["split"]) != c["split"]:
            raise ValueError(f"{csv}: prompt {c['prompt_id']!r} has candidates in both splits; give its rows one split")
    return (conform(pl.DataFrame(items, infer_schema_length=None), "items"),
            pl.DataFrame(cands, schema=CANDIDATES_SCHEMA))
