"""Rendering throughput on the shared real meshes.

Renders orbit6 x {rgb, geometry, normal} at 512^2 for every mesh in ../shared/meshes into a temporary
folder (PNGs, grids and metadata written, as `rewardkit render` does) and prints:

- views/s (one view = one camera in one mode)
- overhead ratio = total wall time / time inside pyrender's render calls (target <= 1.5)
- speed-up over the naive pattern of creating a new offscreen renderer for every view

Usage: python benchmarks/bench_render.py [--size 512] [--meshes DIR] [--naive-meshes 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np

from rewardkit.io import load_mesh
from rewardkit.render import Renderer, get_protocol, render_batch

MODES = ("rgb", "geometry", "normal")


def naive_render(mesh, protocol) -> float:
    """The common pattern: a new pyrender.OffscreenRenderer (a new GL context) for every view."""
    import pyrender

    t0 = time.perf_counter()
    for pose in protocol.camera_poses():
        for mode in MODES:
            r = pyrender.OffscreenRenderer(protocol.size, protocol.size)
            scene = pyrender.Scene(bg_color=[1, 1, 1, 1], ambient_light=[0.35] * 3)
            for g in mesh.geometries:
                scene.add(pyrender.Mesh.from_trimesh(g, smooth=False))
            scene.add(pyrender.PerspectiveCamera(yfov=np.deg2rad(protocol.yfov_deg)), pose=pose)
            scene.add(pyrender.DirectionalLight(intensity=2.6), pose=pose)
            r.render(scene, flags=pyrender.RenderFlags.FLAT if mode == "normal" else 0)
            r.delete()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--meshes", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "meshes")
    ap.add_argument("--naive-meshes", type=int, default=3, help="how many meshes to time with the naive pattern")
    args = ap.parse_args()
    paths = sorted(p for ext in ("glb", "obj", "ply") for p in args.meshes.glob(f"*/*.{ext}"))
    protocol = get_protocol("orbit6", size=args.size)
    n_views = len(paths) * protocol.n_views * len(MODES)

    with Renderer(size=args.size) as renderer:  # warm-up (shader compilation, first context)
        renderer.render(load_mesh(paths[0]), get_protocol([(0, 20)], size=args.size), ("rgb",))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = render_batch(paths, tmp, protocol, MODES, progress=False)
        wall = time.perf_counter() - t0
        inside = summary.render_seconds
        assert not summary.failed, summary.failed

    with Renderer(size=args.size) as renderer:

        naive_paths = paths[: args.naive_meshes]
        loaded = [load_mesh(p) for p in naive_paths]
        renderer.render_seconds = 0.0
        t1 = time.perf_counter()
        for m in loaded:
            renderer.render(m, protocol, MODES)
        reused = time.perf_counter() - t1
    # after closing ours: pyrender's delete() terminates the process-wide EGL display
    naive = sum(naive_render(m, protocol) for m in loaded)

    print(f"meshes: {len(paths)}   protocol: orbit6 @ {args.size}px   modes: {','.join(MODES)}   views: {n_views}")
    print(f"total wall time of render_batch (load, render, write)  : {wall:.2f} s")
    print(f"time inside pyrender render calls:                        {inside:.2f} s")
    print(f"views/s (end to end):                                     {n_views / wall:.1f}")
    print(f"overhead ratio (wall / render calls, target <= 1.5):      {wall / inside:.2f}")
    print(f"reused renderer vs new renderer per view ({len(loaded)} meshes, render only): "
          f"{reused:.2f} s vs {naive:.2f} s -> speed-up x{naive / reused:.1f}")


if __name__ == "__main__":
    main()
