"""Manifests: the items of a batch (mesh path, prompt, optional id) in a parquet, CSV or JSONL file of any size.

Columns: ``mesh`` (or ``mesh_path``), ``prompt`` (needed to score, ignored to render), ``id`` (or
``item_id``, optional). The file is read in chunks (parquet row batches, CSV/JSONL lines), never whole.

A manifest is input from someone else: a mesh path must be relative to the manifest's folder and stay
inside it (absolute paths, ``..`` escapes and symlinks out of the folder are refused). A row that breaks a
rule (a path out of the folder, no mesh, no prompt to score, an id that is not a safe folder name, an id
seen before) becomes one failed item naming the row and the problem; the other rows go on. A manifest
that cannot be read at all (missing file, unknown format, no ``mesh`` column) raises
:class:`ManifestError`.

Without an ``id`` column an item's id is its mesh path relative to the folder, suffix dropped, ``/`` as
``__`` (``chairs/a.glb`` -> ``chairs__a``): the render folder name and the key of the results table.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rewardkit.errors import RewardkitError

FORMATS = (".parquet", ".csv", ".jsonl", ".ndjson")
MESH_COLUMNS = ("mesh", "mesh_path")
ID_COLUMNS = ("id", "item_id")
MAX_ID_CHARS = 200
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


class ManifestError(RewardkitError, ValueError):
    """A manifest that cannot be read: missing file, unknown format, no mesh column, a malformed line."""


@dataclass(frozen=True)
class Item:
    """One row of a manifest: ``row`` (1-based, data rows), ``id``, ``mesh`` (an absolute path inside the
    manifest's folder), ``prompt``; ``error`` set when the row breaks a rule (then nothing is done for it)."""

    row: int
    id: str
    mesh: str
    prompt: str | None = None
    error: str | None = None


def _raw_rows(path: Path, chunk_rows: int) -> Iterator[list[dict]]:
    """The manifest's rows as dicts, ``chunk_rows`` at a time."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ManifestError(f"{path}: unknown manifest format {suffix!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # the [ray] extra brings pyarrow

        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            columns = [c for c in (*MESH_COLUMNS, "prompt", *ID_COLUMNS) if c in names]
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns or None):
                yield batch.to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ManifestError(f"{path}: cannot read the parquet manifest: {exc}") from None
        return
    try:
        fh = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror or exc}") from None
    with fh:
        chunk: list[dict] = []
        if suffix == ".csv":
            reader: Iterator = csv.DictReader(fh)
        else:
            reader = _jsonl(fh, path)
        try:
            for row in reader:
                chunk.append(row)
                if len(chunk) >= chunk_rows:
                    yield chunk
                    chunk = []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: cannot read the manifest: {exc}") from None
        if chunk:
            yield chunk


def _jsonl(fh, path: Path) -> Iterator[dict]:
    for n, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: line {n} is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{path}: line {n} is not a JSON object")
        yield obj


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def default_id(rel: str) -> str:
    """An item's id from its mesh path relative to the manifest's folder (``chairs/a.glb`` -> ``chairs__a``)."""
    stem = Path(rel).with_suffix("").as_posix().replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", stem).lstrip("._-") or "mesh"


def resolve_row(raw: dict, n: int, root: Path, need_prompt: bool) -> Item:
    """One raw row -> an :class:`Item` (``error`` set when it breaks a rule; see the module docstring).
    ``root``: the manifest's folder, resolved."""
    mesh_key = next((k for k in MESH_COLUMNS if k in raw), MESH_COLUMNS[0])
    mesh = _text(raw.get(mesh_key))
    prompt = _text(raw.get("prompt")) or None
    given_id = _text(next((raw[k] for k in ID_COLUMNS if k in raw and _text(raw[k])), None))
    where = f"row {n}"
    if not mesh:
        return Item(n, given_id or f"row-{n}", "", prompt, f"{where}: no mesh path")
    if Path(mesh).is_absolute() or mesh.startswith("~"):
        return Item(n, given_id or f"row-{n}", mesh, prompt,
                    f"{where}: {mesh!r} is an absolute path; a manifest names meshes relative to its folder")
    full = (root / mesh).resolve()
    if not full.is_relative_to(root):
        return Item(n, given_id or f"row-{n}", mesh, prompt, f"{where}: {mesh!r} is outside the manifest's folder {root}")
    item_id = given_id or default_id(full.relative_to(root).as_posix())
    if len(item_id) > MAX_ID_CHARS or not _SAFE_ID.match(item_id):
        return Item(n, f"row-{n}", str(full), prompt,
                    f"{where}: id {item_id[:80]!r} is not a safe folder name (letters, digits, . _ = + -; "
                    f"at most {MAX_ID_CHARS} characters, not starting with . _ or -)")
    if need_prompt and not prompt:
        return Item(n, item_id, str(full), None, f"{where}: no prompt")
    return Item(n, item_id, str(full), prompt)


def read_manifest(path: str | Path, *, need_prompt: bool = False, chunk_rows: int = 4096) -> Iterator[list[Item]]:
    """The manifest's items, ``chunk_rows`` at a time, each resolved and checked (:func:`resolve_row`); an
    id seen on an earlier row makes the later row a failed item (``duplicate id``)."""
    path = Path(path)
    root = path.parent.resolve()
    seen: dict[str, int] = {}
    n = 0
    checked_columns = False
    for chunk in _raw_rows(path, chunk_rows):
        items = []
        for raw in chunk:
            n += 1
            if not checked_columns:
                if not any(k in raw for k in MESH_COLUMNS):
                    raise ManifestError(f"{path}: no 'mesh' column (has {sorted(raw)})")
                if need_prompt and "prompt" not in raw:
                    raise ManifestError(f"{path}: no 'prompt' column, which scoring needs (has {sorted(raw)})")
                checked_columns = True
            item = resolve_row(raw, n, root, need_prompt)
            if item.error is None:
                first = seen.setdefault(item.id, n)
                if first != n:
                    item = Item(n, f"row-{n}", item.mesh, item.prompt,
                                f"row {n}: duplicate id {item.id!r} (first on row {first}); give each row its own id")
            items.append(item)
        yield items
    if n == 0:
        raise ManifestError(f"{path}: no rows")


__all__ = ["FORMATS", "Item", "ManifestError", "default_id", "read_manifest", "resolve_row"]
