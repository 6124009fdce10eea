"""Local engine vs Ray Data engine on the same manifest of meshes (issue 27).

Generates N meshes (default 48: icospheres, tori, boxes, cones, capsules with vertex colours, 1-5k faces),
writes a manifest, and renders (orbit6 x rgb,geometry at --size px) and scores (the tests' tiny exported
scorer set, 64 px orbit4) them with the local engine and with the Ray engine (1 and 2 actors) on a local
``ray.init(num_cpus=--cpus)``. Each run writes into a fresh folder (nothing is skipped). Prints, side by side:

- start-up: ``ray.init`` once; then per run, the time from the call to its first finished item (actor
  start, GL context / scorer load, first item);
- steady state: items/s after the first item, and the overhead ratio = Ray's seconds per item / the local
  engine's seconds per item without start-up (> 1: Ray costs more per item on the same cores);
- 1 vs 2 actors: the steady-state speed-up of 2 actors over 1.

Usage: python benchmarks/bench_ray.py [--meshes 48] [--size 128] [--cpus 2] [--smoke] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny exported scorer set of the tests

import numpy as np  # noqa: E402
import trimesh  # noqa: E402


def make_meshes(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "m").mkdir(parents=True)
    lines = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            m = trimesh.creation.icosphere(subdivisions=3, radius=float(rng.uniform(0.3, 0.6)))
        elif kind == 1:
            m = trimesh.creation.torus(major_radius=0.5, minor_radius=float(rng.uniform(0.1, 0.25)),
                                       major_sections=48, minor_sections=24)
        elif kind == 2:
            m = trimesh.creation.box(extents=rng.uniform(0.3, 1.0, 3))
        elif kind == 3:
            m = trimesh.creation.cone(radius=0.4, height=float(rng.uniform(0.5, 1.0)), sections=64)
        else:
            m = trimesh.creation.capsule(height=float(rng.uniform(0.3, 0.8)), radius=0.25, count=[32, 32])
        m.visual.vertex_colors = np.concatenate(
            [rng.integers(0, 255, (len(m.vertices), 3)), np.full((len(m.vertices), 1), 255)], axis=1).astype(np.uint8)
        m.export(root / "m" / f"mesh{i:03d}.glb")
        lines.append(json.dumps({"id": f"mesh{i:03d}", "mesh": f"m/mesh{i:03d}.glb", "prompt": f"a shape number {i}"}))
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    return root / "items.jsonl"


def timed(records_iter) -> dict:
    """Drain an engine's records: total seconds, seconds to the first record, items/s after it."""
    t0 = time.perf_counter()
    stamps, failed = [], 0
    for rec in records_iter:
        stamps.append(time.perf_counter() - t0)
        failed += bool(rec.get("error"))
    total = time.perf_counter() - t0
    first = stamps[0]
    after = len(stamps) - 1
    # the local engine hands records back per chunk: steady state = items after the first chunk / its time
    first_chunk = sum(1 for s in stamps if s - first < 1e-3)
    steady_items = len(stamps) - first_chunk
    steady_s = max(total - first, 1e-9)
    return {"items": len(stamps), "failed": failed, "total_s": round(total, 3), "first_item_s": round(first, 3),
            "steady_items_per_s": round(steady_items / steady_s, 3) if steady_items else None,
            "steady_s_per_item": round(steady_s / steady_items, 4) if steady_items else None, "after_first": after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshes", type=int, default=48)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray instance")
    ap.add_argument("--smoke", action="store_true", help="6 meshes at 32 px, 2 actors only: runs end to end")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.meshes, args.size = 6, 32

    import ray

    from _fixtures_scoring import scorer_set_dir
    from rewardkit.engines import LocalEngine, RayEngine, RenderJob, ScoreJob, read_manifest
    from rewardkit.render import get_protocol

    tmp = Path(tempfile.mkdtemp(prefix="rk-bench-ray-"))
    manifest = make_meshes(tmp, args.meshes)
    items = [it for chunk in read_manifest(manifest, need_prompt=True) for it in chunk]
    protocol = get_protocol("orbit6", size=args.size)
    render_job = lambda out: RenderJob(str(tmp / out), protocol, ("rgb", "geometry"))  # noqa: E731
    score_job = ScoreJob(scorers=(str(scorer_set_dir()),), device="cpu", batch_size=8)
    results: dict = {"meshes": args.meshes, "size": args.size, "cpus": args.cpus, "machine_cpus": os.cpu_count()}

    print(f"{args.meshes} meshes, render orbit6 x rgb,geometry at {args.size} px; score: tiny scorer set "
          f"(orbit4, 64 px); Ray: ray.init(num_cpus={args.cpus})", flush=True)
    results["render_local"] = timed(LocalEngine().render(render_job("local"), items))
    results["score_local"] = timed(LocalEngine().score(score_job, items))
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    results["ray_init_s"] = round(time.perf_counter() - t0, 3)
    try:
        for actors in ([2] if args.smoke else [1, 2]):
            eng = RayEngine(actors=actors, batch_size=2)
            results[f"render_ray{actors}"] = timed(eng.render(render_job(f"ray{actors}"), items))
            results[f"score_ray{actors}"] = timed(eng.score(score_job, items))
    finally:
        ray.shutdown()

    def row(name: str, r: dict, base: dict | None) -> str:
        ratio = (f"{r['steady_s_per_item'] / base['steady_s_per_item']:.2f}"
                 if base and r["steady_s_per_item"] and base["steady_s_per_item"] else "-")
        ips = r["steady_items_per_s"]
        return (f"{name:<16}{r['items']:>6}{r['failed']:>7}{r['total_s']:>10.2f}{r['first_item_s']:>14.2f}"
                f"{(ips if ips is not None else float('nan')):>12.2f}{ratio:>10}")

    print(f"ray.init: {results['ray_init_s']:.2f} s")
    print(f"{'run':<16}{'items':>6}{'failed':>7}{'total s':>10}{'first item s':>14}{'items/s*':>12}{'ratio*':>10}")
    for what in ("render", "score"):
        base = results[f"{what}_local"]
        print(row(f"{what} local", base, base))
        for actors in ([2] if args.smoke else [1, 2]):
            print(row(f"{what} ray x{actors}", results[f"{what}_ray{actors}"], base))
        if not args.smoke:
            one, two = results[f"{what}_ray1"], results[f"{what}_ray2"]
            if one["steady_items_per_s"] and two["steady_items_per_s"]:
                results[f"{what}_2_vs_1_actors"] = round(two["steady_items_per_s"] / one["steady_items_per_s"], 2)
                print(f"{what}: 2 actors / 1 actor (steady items/s): {results[f'{what}_2_vs_1_actors']:.2f}x")
    print("* after the first finished item (start-up excluded); ratio = s per item / the local engine's")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
