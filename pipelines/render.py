"""Stage ``render``: every candidate through the camera protocol, in the modes the reward stages read."""

from __future__ import annotations

import shutil
import sys

import polars as pl

from pipelines._common import GENERATED_ITEMS, ITEMS, RENDERS_DIR, chdir_root, params, step


def main() -> None:
    chdir_root()
    p = params("render")
    from rewardkit.data.tables import read_items, write_table
    from rewardkit.render import RenderConfig, render_batch

    items = read_items(GENERATED_ITEMS)
    if RENDERS_DIR.exists():
        shutil.rmtree(RENDERS_DIR)  # a DVC out is rebuilt whole; no stale folders from an older run
    with step("render"):
        summary = render_batch(
            items["mesh_path"].to_list(), RENDERS_DIR, p["protocol"], tuple(p["modes"]),
            size=int(p["size"]), workers=int(p["workers"]), names=items["item_id"].to_list(),
            config=RenderConfig(background=tuple(p.get("background", (255, 255, 255)))),
            progress=sys.stderr.isatty(),
        )
        print(f"  {len(summary.rendered)} rendered, {len(summary.failed)} failed "
              f"({p['protocol']}, {p['size']}px, modes {','.join(p['modes'])})")
    if summary.failed:
        for f in summary.failed[:20]:
            print(f"  failed: {f['mesh_path']}: {f['error']}", file=sys.stderr)
        raise SystemExit(f"render: {len(summary.failed)} meshes failed (see {RENDERS_DIR}/summary.json)")
    items = items.with_columns((pl.lit(str(RENDERS_DIR) + "/") + pl.col("item_id")).alias("render_dir"))
    write_table(items, ITEMS, "items")


if __name__ == "__main__":
    main()
