"""The prompt set of a generator evaluation: :func:`read_prompt_set` reads its CSV (``object_id``, ``prompt``,
optional ``category``, ``generation``, ``reference``) and finds each object's generated mesh and its reference
(a mesh, or a folder of reference renders); :mod:`rewardkit.eval.generation.runner` evaluates them."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rewardkit.errors import RewardkitError
from rewardkit.eval.generation.protocol import category_slug


class EvalInputError(RewardkitError, ValueError):
    """A prompt set, folder or option that cannot be evaluated at all (names the file and the problem)."""


@dataclass
class EvalObject:
    object_id: str
    prompt: str
    category: str | None
    generation: Path | None  # None: no file found (reported as excluded)
    reference: Path | None
    reference_kind: str  # "mesh" | "renders"
    missing: list[str] = field(default_factory=list)


# -- the prompt set ----------------------------------------------------------------------------------------

def _find(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for s in suffixes:
        p = folder / f"{stem}{s}"
        if p.is_file():
            return p
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def read_prompt_set(prompts_csv: str | Path, generations: str | Path, *, reference_meshes: str | Path | None = None,
                    reference_renders: str | Path | None = None) -> list[EvalObject]:
    """The objects of a prompt set, with their generation and reference paths (see the module docstring).

    Columns: ``object_id`` (or ``id``), ``prompt``; optional ``category`` (MME-3DR's names or slugs),
    ``generation`` (a mesh path relative to ``generations``; default ``<object_id>.<mesh suffix>`` there),
    ``reference`` (relative to the reference folder; default ``<object_id>.<mesh suffix>`` for meshes,
    ``<object_id>/`` for renders). Paths may not leave their folder. Problems with the table itself raise
    :class:`EvalInputError`; a file that is not there is recorded on its object (``missing``)."""
    from rewardkit.io import SUPPORTED_FORMATS

    prompts_csv, generations = Path(prompts_csv), Path(generations)
    if (reference_meshes is None) == (reference_renders is None):
        raise EvalInputError("give exactly one of reference meshes or reference renders")
    ref_root = Path(reference_meshes if reference_meshes is not None else reference_renders)  # type: ignore[arg-type]
    kind = "mesh" if reference_meshes is not None else "renders"
    for what, folder in (("generations", generations), ("references", ref_root)):
        if not folder.is_dir():
            raise EvalInputError(f"{folder}: {what} folder not found")
    if not prompts_csv.is_file():
        raise EvalInputError(f"{prompts_csv}: prompt set not found")
    try:
        rows = list(csv.DictReader(prompts_csv.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalInputError(f"{prompts_csv}: cannot read the prompt set: {exc}") from exc
    if not rows:
        raise EvalInputError(f"{prompts_csv}: no rows (expected a header with object_id,prompt and one row per object)")
    cols = {c.strip().lower(): c for c in rows[0] if c}
    id_col = cols.get("object_id") or cols.get("id")
    if id_col is None or "prompt" not in cols:
        raise EvalInputError(f"{prompts_csv}: needs columns object_id (or id) and prompt, has {list(rows[0])}")
    mesh_suffixes = tuple(SUPPORTED_FORMATS)
    objects: list[EvalObject] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, 2):
        oid = (row.get(id_col) or "").strip()
        prompt = (row.get(cols["prompt"]) or "").strip()
        if not oid or not prompt:
            raise EvalInputError(f"{prompts_csv}:{n}: empty object_id or prompt")
        if oid in seen:
            raise EvalInputError(f"{prompts_csv}:{n}: object_id {oid!r} appears twice")
        seen.add(oid)
        cat = (row.get(cols["category"]) or "").strip() if "category" in cols else ""
        missing = []
        gen_rel = (row.get(cols["generation"]) or "").strip() if "generation" in cols else ""
        gen = (generations / gen_rel) if gen_rel else _find(generations, oid, mesh_suffixes)
        if gen is not None and not _inside(gen, generations):
            raise EvalInputError(f"{prompts_csv}:{n}: generation {gen_rel!r} lies outside {generations}")
        if gen is None or not gen.is_file():
            missing.append(f"generation not found: {gen if gen is not None else generations / (oid + '.*')}")
        ref_rel = (row.get(cols["reference"]) or "").strip() if "reference" in cols else ""
        if ref_rel:
            ref: Path | None = ref_root / ref_rel
        elif kind == "mesh":
            ref = _find(ref_root, oid, mesh_suffixes)
        else:
            ref = ref_root / oid
        if ref is not None and not _inside(ref, ref_root):
            raise EvalInputError(f"{prompts_csv}:{n}: reference {ref_rel!r} lies outside {ref_root}")
        if ref is None or not (ref.is_file() if kind == "mesh" else ref.is_dir()):
            missing.append(f"reference not found: {ref if ref is not None else ref_root / (oid + '.*')}")
        objects.append(EvalObject(oid, prompt, category_slug(cat) if cat else None,
                                  gen if gen is not None and gen.is_file() else None,
                                  ref if ref is not None and ref.exists() else None, kind, missing))
    return objects


__all__ = ["EvalInputError", "EvalObject", "read_prompt_set"]
