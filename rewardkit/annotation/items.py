"""An ``items`` table from a folder of render folders plus a prompts CSV (the hand-made route).

``renders/<item_id>/`` is one candidate's render folder (``meta.json``, ``grid_<mode>.png``, as
``rewardkit render --out renders`` writes them). The CSV has columns ``item_id`` and ``prompt`` and
optionally ``prompt_id`` (default: a hash of the prompt text, so equal prompts group together),
``generator`` and ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from rewardkit.data.candidates import prompt_id_of
from rewardkit.data.tables import conform


def items_from_renders(renders: str | Path, prompts_csv: str | Path) -> pl.DataFrame:
    renders, prompts_csv = Path(renders), Path(prompts_csv)
    if not renders.is_dir():
        raise FileNotFoundError(f"{renders}: renders folder not found")
    table = pl.read_csv(prompts_csv, infer_schema_length=0)  # all strings
    for col in ("item_id", "prompt"):
        if col not in table.columns:
            raise ValueError(f"{prompts_csv}: needs columns item_id and prompt (has {table.columns})")
    from rewardkit.render.folder import META_FILE, RenderFolderError, read_meta

    rows, missing = [], []
    for r in table.iter_rows(named=True):
        rd = renders / r["item_id"]
        try:
            meta = read_meta(rd)
        except RenderFolderError:
            missing.append(str(rd / META_FILE))
            continue
        rows.append({
            "item_id": r["item_id"],
            "prompt_id": r.get("prompt_id") or prompt_id_of(r["prompt"]),
            "prompt": r["prompt"],
            "mesh_path": meta.get("mesh_path"),
            "mesh_sha256": meta.get("mesh_sha256"),
            "generator": r.get("generator") or "unknown",
            "seed": int(r["seed"]) if r.get("seed") not in (None, "") else None,
            "render_dir": str(rd),
        })
    if missing:
        raise FileNotFoundError(f"{len(missing)} render folder(s) missing or not rendered: {missing[:20]}")
    return conform(pl.DataFrame(rows, infer_schema_length=None), "items")
