"""How long AR3D-R1's Table 4 evaluation takes at the paper's scale: 800 objects x 24 views (toys4k24).

Prints, on this machine (CPU unless --device cuda):

- renders/s of rewardkit's renderer in the evaluation's mode (``rgb`` at --size px, the 24 toys4k24 views),
  measured on --render-objects real meshes from ../shared/meshes, and the extrapolation to 19,200 renders;
- feature extraction views/s of Inception-V3 at 299 px (random-init torchvision weights: the same network
  and cost as the pretrained one), DINOv2 (a ViT-B/14 of facebook/dinov2-base's shape, random init, 224 px)
  and CLIP ViT-B-32 (random init, 224 px), each measured on --feature-views views in batches of
  --batch-size and extrapolated to 19,200 views (printed as extrapolated);
- the metric time on real-sized arrays, measured for real: KD (100 subsets of 1000) and FD between two
  19,200 x 2048 arrays (Inception), KD on 19,200 x 768 (DINOv2), the CLIP score over 19,200 views.

    PYOPENGL_PLATFORM=egl python benchmarks/bench_eval_gen.py [--device cuda] [--skip-features]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "meshes"
N_OBJECTS, N_VIEWS = 800, 24


def bench_render(n_objects: int, size: int) -> float:
    import json

    from rewardkit.io import load_mesh
    from rewardkit.render import Renderer, get_protocol

    assets = json.loads((SHARED / "manifest.json").read_text())[:n_objects]
    meshes = [load_mesh(SHARED / a["id"] / a["mesh"]) for a in assets]
    proto = get_protocol("toys4k24", size=size)
    with Renderer(size=size) as r:
        r.render(meshes[0], proto, ("rgb",))  # warm-up: GL context, shaders
        t = time.perf_counter()
        for m in meshes:
            r.render(m, proto, ("rgb",))
        dt = time.perf_counter() - t
    rate = len(meshes) * proto.n_views / dt
    print(f"render: {len(meshes)} real meshes x {proto.n_views} views at {size} px (rgb): {dt:.2f}s, "
          f"{rate:.1f} renders/s (one process, one GL context; meshes preloaded)")
    print(f"  -> {N_OBJECTS} x {N_VIEWS} = {N_OBJECTS * N_VIEWS} renders: ~{N_OBJECTS * N_VIEWS / rate:.0f}s "
          "(extrapolated; loading and PNG writing come on top, rewardkit render --workers N parallelizes)")
    return rate


def bench_features(n_views: int, batch: int, device: str) -> None:
    import torch

    from rewardkit.eval.generation.features import (
        load_clip,
        load_dinov2,
        load_inception,
    )
    from rewardkit.eval.generation.random_init import (
        write_random_clip,
        write_random_dinov2,
        write_random_inception,
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-gen-"))
    exts = {
        "Inception-V3 @299": load_inception(write_random_inception(tmp / "inc.pth"), device=device),
        "DINOv2 ViT-B/14 @224": load_dinov2(write_random_dinov2(tmp / "dino", hidden_size=768, layers=12, heads=12,
                                                                image_size=224), device=device),
        "CLIP ViT-B-32 @224": load_clip("ViT-B-32", write_random_clip(tmp / "clip.safetensors", "ViT-B-32"), device=device),
    }
    images = np.random.default_rng(0).integers(0, 256, size=(n_views, 512, 512, 3), dtype=np.uint8)
    for name, ext in exts.items():
        ext(images[:2])  # warm-up
        t = time.perf_counter()
        for b in range(0, n_views, batch):
            ext(images[b:b + batch])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rate = n_views / dt
        print(f"features {name}: {n_views} views (512 px in, batch {batch}, {device}) in {dt:.2f}s = {rate:.2f} views/s"
              f" -> {N_OBJECTS * N_VIEWS} views x 2 sets: ~{2 * N_OBJECTS * N_VIEWS / rate / 60:.1f} min (extrapolated)")


def bench_metrics(n_objects: int = N_OBJECTS) -> None:
    from rewardkit.eval.generation import metrics as M

    rng = np.random.default_rng(0)
    n = n_objects * N_VIEWS
    for d, label in ((2048, "Inception"), (768, "DINOv2")):
        x = np.abs(rng.normal(0.3, 0.3, size=(n, d)))
        y = np.abs(rng.normal(0.31, 0.3, size=(n, d)))
        t = time.perf_counter()
        kd = M.kernel_distance(x, y, subsets=100, subset_size=min(1000, n))
        t_kd = time.perf_counter() - t
        t = time.perf_counter()
        fd = M.frechet_distance(x, y)
        t_fd = time.perf_counter() - t
        print(f"metrics {label} {n} x {d} per set (measured): KD x100 {100 * kd.mean:.4f} (100 subsets of 1000) in "
              f"{t_kd:.2f}s; FD {fd:.4f} in {t_fd:.2f}s")
    img = rng.normal(size=(n, 512))
    txt = np.repeat(rng.normal(size=(n_objects, 512)), N_VIEWS, axis=0)
    t = time.perf_counter()
    M.clip_score(img, txt, np.repeat(np.arange(n_objects), N_VIEWS))
    print(f"metrics CLIP score over {n} views (measured): {time.perf_counter() - t:.3f}s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--render-objects", type=int, default=6)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--feature-views", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-render", action="store_true")
    ap.add_argument("--skip-features", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the test suite's run): 1 object, 64 px, "
                    "2 feature views, metrics on 20 objects")
    a = ap.parse_args(argv)
    if a.smoke:
        a.render_objects, a.size, a.feature_views, a.batch_size = 1, 64, 2, 2
    import torch

    print(f"bench_eval_gen: torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}", flush=True)
    if not a.skip_render:  # in its own process: a GL context torn down before torch's first conv crashed here
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            pool.submit(bench_render, a.render_objects, a.size).result()
    if not a.skip_features:
        bench_features(a.feature_views, a.batch_size, a.device)
    bench_metrics(20 if a.smoke else N_OBJECTS)


if __name__ == "__main__":
    sys.exit(main())
