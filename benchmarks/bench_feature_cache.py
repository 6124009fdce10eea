"""What rewardkit's one feature cache (rewardkit.render.features) costs, next to what it replaced.

Prints, side by side, per item of --views views at --size px (PNG files in ``<item>/rgb/NN.png``, smooth
shaded images on white like renders, written once into a temporary folder):

- finding an item's key: eval-gen's former key (sha256 of the view files' bytes), training's former key
  (decode every view, sha256 of the pixels) and the one key now (``views_key``: sha256 of the files and the
  decoding settings; nothing decoded);
- reading a hit: eval-gen's former ``.npy`` entry, training's former safetensors ``load_file`` and the entry
  now (safetensors read whole under the size bound, checked);
- a whole re-run with every item cached (key + read), the three ways, extrapolated to eval-gen's 800
  objects x 24 views x 2 sets;
- the peak memory (tracemalloc) of encoding --items items with a trivial encoder: all views decoded at once
  (as training's former prefetch did) against ``cached_features`` (about --batch-size views at a time).

    python benchmarks/bench_feature_cache.py [--items 40 --views 24 --size 512 --batch-size 32] [--smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import PIL.Image

DIM = 2048  # Inception-V3's pool features


def write_items(root: Path, n: int, views: int, size: int) -> list[Path]:
    yy, xx = np.mgrid[0:size, 0:size] / size
    items = []
    for i in range(n):
        d = root / f"item{i:04d}"
        (d / "rgb").mkdir(parents=True)
        for v in range(views):
            cx, cy, r = 0.5 + 0.1 * np.sin(i + v), 0.5 + 0.1 * np.cos(i * v + 1), 0.3
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            shade = np.clip(1.2 - ((xx - cx + 0.1) ** 2 + (yy - cy + 0.1) ** 2) * 4, 0, 1)
            img = np.full((size, size, 3), 255, np.uint8)
            img[inside] = (shade[inside, None] * np.array([200, 120 + (i % 5) * 20, 60 + v])).astype(np.uint8)
            PIL.Image.fromarray(img).save(d / "rgb" / f"{v:02d}.png")
        items.append(d)
    return items


def old_key(paths: list[Path], background) -> str:
    """eval-gen's former render digest (the view files' bytes and the background)."""
    h = hashlib.sha256(json.dumps(list(background)).encode())
    for p in paths:
        h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()


def pixel_key(views: list[np.ndarray]) -> str:
    """training's former render hash (sha256 of the decoded pixels and their shape)."""
    h = hashlib.sha256(str((len(views), *views[0].shape)).encode())
    for v in views:
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def timed(fn, items) -> float:
    t = time.perf_counter()
    for it in items:
        fn(it)
    return (time.perf_counter() - t) / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--smoke", action="store_true", help="4 items of 3 views at 64 px")
    a = ap.parse_args()
    if a.smoke:
        a.items, a.views, a.size, a.batch_size = 4, 3, 64, 4

    from rewardkit.render import open_view, view_files
    from rewardkit.render.features import Encoder, FeatureCache, cached_features, views_key

    bg = (255, 255, 255)
    tmp = Path(tempfile.mkdtemp(prefix="bench-feature-cache-"))
    items = write_items(tmp / "renders", a.items, a.views, a.size)
    paths = {d: view_files(d, "rgb") for d in items}
    print(f"{a.items} items x {a.views} views at {a.size} px ({sum(p.stat().st_size for v in paths.values() for p in v) / len(items) / 1e6:.2f} MB of PNG per item)")

    def decode(d):
        return [np.asarray(open_view(p, background=bg)) for p in paths[d]]

    t_old_key = timed(lambda d: old_key(paths[d], bg), items)
    t_decode = timed(decode, items)
    decoded = {d: decode(d) for d in items}
    t_pixels = timed(lambda d: pixel_key(decoded[d]), items)
    t_key = timed(lambda d: views_key(paths[d], {"mode": "rgb", "background": list(bg)}), items)
    print(f"key per item: eval-gen's former (sha256 of the files) {1e3 * t_old_key:.1f} ms | training's former "
          f"(decode {1e3 * t_decode:.1f} ms + sha256 of the pixels {1e3 * t_pixels:.1f} ms) "
          f"{1e3 * (t_decode + t_pixels):.1f} ms | now (sha256 of the files + decoding settings) {1e3 * t_key:.1f} ms")

    from safetensors.numpy import load_file

    feats = np.random.default_rng(0).normal(size=(a.views, DIM)).astype(np.float32)
    keys = {d: views_key(paths[d], {"mode": "rgb", "background": list(bg)}) for d in items}
    cache = FeatureCache(tmp / "cache", "ab" * 32)
    t_put = timed(lambda d: cache.put(keys[d], feats), items)
    npy = tmp / "npy"
    npy.mkdir()
    for d in items:
        np.save(npy / f"{keys[d]}.npy", feats, allow_pickle=False)
    t_get_npy = timed(lambda d: np.load(npy / f"{keys[d]}.npy", allow_pickle=False), items)
    t_get_st = timed(lambda d: load_file(str(cache.path(keys[d])))["features"], items)
    t_get = timed(lambda d: cache.get(keys[d], a.views), items)
    assert cache.hits == len(items)
    print(f"read a hit [{a.views}, {DIM}] per item: eval-gen's former .npy {1e3 * t_get_npy:.2f} ms | training's "
          f"former load_file {1e3 * t_get_st:.2f} ms | now (bounded, checked) {1e3 * t_get:.2f} ms "
          f"(write {1e3 * t_put:.2f} ms, atomic)")

    reruns = {"eval-gen's former": t_old_key + t_get_npy, "training's former": t_decode + t_pixels + t_get_st,
              "now": t_key + t_get}
    scale = 800 * 2 * 24 / a.views  # eval-gen at the paper's scale: 800 objects, generated and reference sets
    print("re-run with every item cached, per item: " + " | ".join(f"{k} {1e3 * t:.1f} ms" for k, t in reruns.items())
          + " -> 800 objects x 24 views x 2 sets: " + " | ".join(f"{k} ~{t * scale:.0f} s" for k, t in reruns.items())
          + " (extrapolated)")

    def encode(batch):
        return np.stack(batch)[:, :4, :4, 0].reshape(len(batch), -1).astype(np.float32)

    tracemalloc.start()
    every = np.stack([v for d in items for v in decode(d)])  # all views at once, as the former prefetch held them
    encode(list(every))
    _, peak_all = tracemalloc.get_traced_memory()
    del every
    tracemalloc.stop()
    tracemalloc.start()
    cached_features(paths, decode, {"x": Encoder(FeatureCache(tmp / "cache2", "cd" * 32), encode)},
                    decode_key={"mode": "rgb"}, batch_size=a.batch_size)
    _, peak_stream = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak memory encoding {a.items} items: all views at once {peak_all / 2**20:.1f} MiB | cached_features "
          f"(batch {a.batch_size} views) {peak_stream / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
