"""Local engine vs Ray Data engine on the same manifest of meshes (issue 27).

Generates N meshes (default 48: icospheres, tori, boxes, cones, capsules with vertex colours, 12 to ~2.3k faces),
writes a manifest, and renders (orbit6 x rgb,geometry at --size px) and scores (the tests' tiny exported
scorer set, 64 px orbit4) them with the local engine and with the Ray engine (1 and 2 actors) on a local
``ray.init(num_cpus=--cpus)``. Each run writes into a fresh folder (nothing is skipped). Prints, side by side:

- start-up: ``ray.init`` once; then per engine, the fixed cost of a run, from a straight-line fit
  t(n) = start-up + n x per-item over two runs of the same engine (a small run of ``--small`` items and
  the full run): actor start, GL context / scorer load, Ray Data scheduling;
- the overhead ratio without start-up = Ray's per-item seconds / the local engine's (> 1: Ray costs more
  per item on the same cores);
- 1 vs 2 actors: the per-item speed-up of 2 actors over 1.

The machine's load average is printed before and after: on a shared machine the figures move with it.

Usage: python benchmarks/bench_ray.py [--meshes 48] [--size 128] [--cpus 2] [--small 4] [--smoke] [--json out.json]
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
    """Drain an engine's records: items, failures, seconds."""
    t0 = time.perf_counter()
    n = failed = 0
    for rec in records_iter:
        n += 1
        failed += bool(rec.get("error"))
    return {"items": n, "failed": failed, "seconds": round(time.perf_counter() - t0, 3)}


def fit(small: dict, full: dict) -> dict:
    """t(n) = start-up + n x per-item through the two runs."""
    per_item = (full["seconds"] - small["seconds"]) / max(full["items"] - small["items"], 1)
    return {"small": small, "full": full, "startup_s": round(small["seconds"] - small["items"] * per_item, 3),
            "per_item_s": round(per_item, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshes", type=int, default=48)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray instance")
    ap.add_argument("--small", type=int, default=4, help="items of the small run of each engine")
    ap.add_argument("--smoke", action="store_true", help="6 meshes at 32 px, 2 actors only: runs end to end")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.meshes, args.size, args.small = 6, 32, 2

    import ray

    from helpers.scoring import scorer_set_dir
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
          f"(orbit4, 64 px); Ray: ray.init(num_cpus={args.cpus}); small runs: {args.small} items", flush=True)
    results["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    small = items[:args.small]

    def both(what: str, engine, name: str) -> dict:
        run = engine.render if what == "render" else engine.score
        if what == "render":
            return fit(timed(run(render_job(f"{name}-small"), small)), timed(run(render_job(name), items)))
        return fit(timed(run(score_job, small)), timed(run(score_job, items)))

    for what in ("render", "score"):
        results[f"{what}_local"] = both(what, LocalEngine(), "local")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    results["ray_init_s"] = round(time.perf_counter() - t0, 3)
    actor_counts = [2] if args.smoke else [1, 2]
    try:
        for actors in actor_counts:
            for what in ("render", "score"):
                results[f"{what}_ray{actors}"] = both(what, RayEngine(actors=actors, batch_size=2), f"ray{actors}")
    finally:
        ray.shutdown()
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    print(f"load average before: {results['loadavg_before']}, after: {results['loadavg_after']}")
    print(f"ray.init: {results['ray_init_s']:.2f} s")
    print(f"{'run':<16}{'failed':>7}{'small run s':>13}{'full run s':>12}{'start-up s':>12}{'s / item':>10}"
          f"{'overhead':>10}")
    for what in ("render", "score"):
        base = results[f"{what}_local"]
        for name in ["local", *(f"ray{a}" for a in actor_counts)]:
            r = results[f"{what}_{name}"]
            ratio = r["per_item_s"] / base["per_item_s"] if base["per_item_s"] > 0 else float("nan")
            label = f"{what} {name if name == 'local' else 'ray x' + name[3:]}"
            print(f"{label:<16}{r['small']['failed'] + r['full']['failed']:>7}{r['small']['seconds']:>13.2f}"
                  f"{r['full']['seconds']:>12.2f}{r['startup_s']:>12.2f}{r['per_item_s']:>10.3f}{ratio:>10.2f}")
        if not args.smoke:
            one, two = results[f"{what}_ray1"]["per_item_s"], results[f"{what}_ray2"]["per_item_s"]
            results[f"{what}_2_vs_1_actors"] = round(one / two, 2) if two > 0 else None
            print(f"{what}: 2 actors vs 1 (per-item speed-up): {results[f'{what}_2_vs_1_actors']}x")
    print("start-up and s / item: the line t(n) = start-up + n x s/item through the small and the full run; "
          "overhead = s / item / the local engine's")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
