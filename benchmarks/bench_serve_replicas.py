"""Scorer service throughput: meshes/s through ``POST /score_mesh`` with the local engine (one uvicorn
process) and with 1 and 2 Ray Serve replicas, side by side in one run.

Exports a scorer set (global + local stage models, random init, no download; as benchmarks/bench_scoring.py),
starts a local Ray with ``--ray-cpus`` logical CPUs, deploys 1 replica, warms every replica up, uploads N
meshes from ``--clients`` concurrent client threads and times them; then scales the same deployment to 2
replicas and repeats. Every engine's scores are checked against the local engine's (|diff| <= 1e-5).
Start-up (Ray, Serve, replicas) is reported apart and is not in meshes/s.

Usage::

    python benchmarks/bench_serve_replicas.py [--n 48] [--clients 8] [--replicas 1,2] [--backbone rk-small]
        [--render-size 224] [--camera orbit6] [--meshes DIR] [--ray-cpus 4] [--json out.json] [--smoke]

``--smoke``: 6 meshes, the rk-tiny backbone at 64 px and orbit4 (the suite runs it; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scoring import export_scorers, make_meshes  # the same scorers and meshes

from rewardkit.scoring.client import ScorerClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_engine(app: Any):
    """The app on uvicorn in a thread, as ``rewardkit serve`` runs it (server_config) -> its URL."""
    import uvicorn

    from rewardkit.scoring.service import server_config

    port = _free_port()
    srv = uvicorn.Server(server_config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def upload_all(url: str, meshes: list[Path], clients: int) -> tuple[float, list[dict]]:
    """Every mesh through /score_mesh from ``clients`` threads -> (seconds, answers in mesh order)."""
    conns = [ScorerClient(url, timeout=600) for _ in range(clients)]
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda i: conns[i % clients].score_mesh(meshes[i], f"object {i}"),
                                    range(len(meshes))))
        return time.perf_counter() - t0, answers
    finally:
        for c in conns:
            c.close()


def max_diff(a: list[dict], b: list[dict]) -> float:
    return max(abs(x["scores"][k] - y["scores"][k]) for x, y in zip(a, b) for k in x["scores"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--replicas", default="1,2", help="comma-separated replica counts, measured in this order")
    ap.add_argument("--backbone", default="rk-small")
    ap.add_argument("--render-size", type=int, default=224)
    ap.add_argument("--camera", default="orbit6")
    ap.add_argument("--meshes", type=Path, default=None, help="cycle through the mesh files under DIR")
    ap.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray (1 per replica)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.clients, args.backbone, args.render_size, args.camera = 6, 4, "rk-tiny", 64, "orbit4"
    counts = [int(x) for x in args.replicas.split(",") if x.strip()]

    import ray
    from ray import serve

    from rewardkit.scoring.service import create_app
    from rewardkit.scoring.service_ray import build_app, start

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rk-bench-serve-") as tmp:
        scorers = export_scorers(Path(tmp), args.backbone, args.camera, args.render_size)
        meshes = make_meshes(args.n, Path(tmp) / "meshes", args.meshes)
        print(f"{args.n} meshes, {args.clients} client threads, {args.backbone} at {args.render_size} px, "
              f"{args.camera}; {os.cpu_count()} CPU cores here", flush=True)

        t0 = time.perf_counter()
        with local_engine(create_app(str(scorers), device="cpu")) as url:
            startup = time.perf_counter() - t0
            upload_all(url, meshes[:2], 2)  # warm-up: GL context, first forward
            secs, ref = upload_all(url, meshes, args.clients)
        rows.append({"engine": "local (uvicorn)", "replicas": 1, "startup_s": startup, "seconds": secs,
                     "meshes_per_s": args.n / secs, "max_abs_diff": 0.0})
        print(f"local: {args.n / secs:.2f} meshes/s", flush=True)

        port = _free_port()
        t0 = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        ray_startup = time.perf_counter() - t0
        try:
            for i, n_rep in enumerate(counts):
                t0 = time.perf_counter()
                if i == 0:
                    start([str(scorers)], port=port, replicas=n_rep, device="cpu")
                else:  # the same deployment scaled to n_rep replicas
                    serve.run(build_app([str(scorers)], replicas=n_rep, device="cpu"),
                              name="rewardkit-scorer", route_prefix="/")
                startup = time.perf_counter() - t0 + (ray_startup if i == 0 else 0.0)
                url = f"http://127.0.0.1:{port}"
                upload_all(url, meshes[:4 * n_rep], 2 * n_rep)  # warm-up: every replica's GL context
                secs, got = upload_all(url, meshes, args.clients)
                rows.append({"engine": "ray serve", "replicas": n_rep, "startup_s": startup, "seconds": secs,
                             "meshes_per_s": args.n / secs, "max_abs_diff": max_diff(got, ref)})
                print(f"ray serve, {n_rep} replicas: {args.n / secs:.2f} meshes/s", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()

    base = next((r for r in rows if r["engine"] == "ray serve"), rows[0])["meshes_per_s"]
    print(f"\n{'engine':<16} {'replicas':>8} {'start-up s':>10} {'seconds':>8} {'meshes/s':>9} "
          f"{'vs 1 replica':>12} {'max |diff|':>10}")
    for r in rows:
        print(f"{r['engine']:<16} {r['replicas']:>8} {r['startup_s']:>10.1f} {r['seconds']:>8.2f} "
              f"{r['meshes_per_s']:>9.2f} {r['meshes_per_s'] / base:>11.2f}x {r['max_abs_diff']:>10.1e}")
    bad = [r for r in rows if r["max_abs_diff"] > 1e-5]
    if bad:
        raise SystemExit(f"scores differ from the local engine's: {bad}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
