"""The one feature cache (rewardkit.render.features) and the one reader of view images (rewardkit.render's
``view_files`` / ``open_view`` / ``load_views``), which training on a frozen tower and generator evaluation
both use: the key follows the pixels, entries are read back whole, memory stays at about one batch, and a
damaged or hostile cache folder is never read outside itself nor trusted."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from safetensors.numpy import load_file, save_file

from rewardkit.render import RenderFolderError, ViewImageError, load_views, open_view, view_files
from rewardkit.render.features import Encoder, FeatureCache, FeatureCacheError, cached_features, views_key
from rewardkit.train.views import ViewCache

KEY = "ab" * 32


def _views(seed: int, n: int = 3, size: int = 8) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def _encode(log: list | None = None):
    """A real (tiny) extractor: per-view channel means and std, float32 [B, 6]."""
    def encode(batch):
        x = np.stack(batch).astype(np.float32)
        if log is not None:
            log.append(("encode", len(batch)))
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
    return encode


def test_features_are_encoded_once_in_full_batches_and_read_back(tmp_path):
    items = {f"item{i}": _views(i) for i in range(5)}
    log: list = []

    def load(name):
        log.append(("load", name))
        return items[name]

    cache = FeatureCache(tmp_path, KEY)
    out = cached_features(items, load, {"x": Encoder(cache, _encode(log))}, batch_size=4)["x"]
    assert (cache.hits, cache.misses) == (0, 5)
    # 15 views in batches of 4 (the last one shorter), the first batch encoded before the third item is read
    assert [n for what, n in log if what == "encode"] == [4, 4, 4, 3]
    assert log.index(("encode", 4)) < log.index(("load", "item2"))
    for name, views in items.items():
        assert out[name].dtype == np.float32 and out[name].shape == (3, 6)
        assert np.allclose(out[name], _encode()(views))
    # another run (a new cache object): every entry read back, nothing encoded; moved items keep their features
    again = FeatureCache(tmp_path, KEY)
    log.clear()
    moved = {f"elsewhere/{k}": v for k, v in items.items()}
    back = cached_features(moved, moved.__getitem__, {"x": Encoder(again, _encode(log))}, batch_size=4)["x"]
    assert (again.hits, again.misses) == (5, 0) and log == []
    assert all(np.array_equal(back[f"elsewhere/{k}"], out[k]) for k in items)
    # one pixel changed: another key; another extractor: another folder
    changed = [v.copy() for v in items["item0"]]
    changed[1][0, 0, 0] ^= 1
    assert views_key(changed) != views_key(items["item0"])
    assert FeatureCache(tmp_path, "cd" * 32).get(views_key(items["item0"]), 3) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY[:32]]
    assert not list(tmp_path.rglob("*.tmp"))


def test_items_with_the_same_pixels_are_encoded_once(tmp_path):
    items = {"a": _views(0), "b": _views(1), "a-copy": [v.copy() for v in _views(0)], "a-again": _views(0)}
    log: list = []
    cache = FeatureCache(tmp_path, KEY)
    out = cached_features(items, items.__getitem__, {"x": Encoder(cache, _encode(log))}, batch_size=64)["x"]
    assert (cache.hits, cache.misses) == (2, 2) and sum(n for _, n in log) == 6
    assert np.array_equal(out["a"], out["a-copy"]) and np.array_equal(out["a"], out["a-again"])
    assert set(out) == set(items)


def test_views_of_other_sizes_are_encoded_apart_and_each_encoder_reads_the_views_once(tmp_path):
    items = {"small": _views(0, 2, 8), "large": _views(1, 2, 16), "mixed": [*_views(2, 1, 8), *_views(3, 1, 16)]}
    loads: list = []

    def load(name):
        loads.append(name)
        return items[name]

    tiles = Encoder(FeatureCache(tmp_path, "cd" * 32), _encode(), prepare=lambda vs: [v[::2, ::2] for v in vs])
    out = cached_features(items, load, {"plain": Encoder(FeatureCache(tmp_path, KEY), _encode()), "tiles": tiles},
                          batch_size=3)
    assert loads == ["small", "large", "mixed"]
    for name, views in items.items():
        assert np.allclose(out["plain"][name], np.concatenate([_encode()([v]) for v in views]))
        assert np.allclose(out["tiles"][name], np.concatenate([_encode()([v[::2, ::2]]) for v in views]))


def test_a_damaged_or_hostile_cache_folder_is_a_miss_and_never_read_outside(tmp_path):
    root, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    views = _views(0)
    key = views_key(views)
    cache = FeatureCache(root, KEY, max_entry_bytes=4096)
    entry = cache.path(key)
    entry.parent.mkdir(parents=True)
    good = np.ones((3, 6), np.float32)

    def fresh():
        return FeatureCache(root, KEY, max_entry_bytes=4096)

    for bad in (b"not safetensors at all", b"\xff" * 8 + b"{}"):  # garbage; a header length past the end
        entry.write_bytes(bad)
        assert fresh().get(key, 3) is None
    for tensors in ({"features": good[:2]}, {"features": good.astype(np.float64)}, {"features": good[0]},
                    {"features": good, "other": good}, {"x": good}):
        save_file(tensors, str(entry))
        assert fresh().get(key, 3) is None, tensors
    save_file({"features": np.ones((3, 400), np.float32)}, str(entry))  # > max_entry_bytes: not even read
    assert entry.stat().st_size > 4096 and fresh().get(key, 3) is None
    # a link to a valid entry outside the cache is not followed
    save_file({"features": good}, str(outside / "entry.safetensors"))
    entry.unlink()
    entry.symlink_to(outside / "entry.safetensors")
    assert fresh().get(key, 3) is None
    # the miss is encoded and written over the link (the file outside is untouched)
    out = cached_features({"a": views}, {"a": views}.__getitem__, {"x": Encoder(fresh(), _encode())})["x"]["a"]
    assert not entry.is_symlink() and np.array_equal(fresh().get(key, 3), out)
    assert np.array_equal(load_file(str(outside / "entry.safetensors"))["features"], good)
    # an extractor folder that is a link out of the cache: nothing read there, nothing written there
    other = FeatureCache(root, "ef" * 32)
    save_file({"features": good}, str(outside / "x.safetensors"))
    (outside / key[:2]).mkdir()
    os.link(outside / "x.safetensors", outside / key[:2] / f"{key}.safetensors")
    other.dir.symlink_to(outside)
    assert other.get(key, 3) is None
    with pytest.raises(FeatureCacheError, match="leads out of the feature cache"):
        other.put(views_key(_views(1)), good)
    assert sorted(p.name for p in outside.rglob("*")) == sorted(["entry.safetensors", "x.safetensors", key[:2],
                                                                 f"{key}.safetensors"])
    # names are hex digests only
    with pytest.raises(FeatureCacheError, match="not a hex digest"):
        FeatureCache(root, "../../etc")
    with pytest.raises(FeatureCacheError, match="not a hex digest"):
        cache.get("../" + key[3:], 3)
    # an entry too large to be read back is refused when written
    with pytest.raises(FeatureCacheError, match="max_entry_bytes"):
        cache.put(key, np.ones((3, 4000), np.float32))


def test_concurrent_writers_leave_one_whole_entry(tmp_path):
    key = views_key(_views(0))
    feats = [np.full((3, 512), i, np.float32) for i in range(8)]
    threads = [threading.Thread(target=lambda f=f: [FeatureCache(tmp_path, KEY).put(key, f) for _ in range(20)])
               for f in feats]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = FeatureCache(tmp_path, KEY).get(key, 3)
    assert got is not None and any(np.array_equal(got, f) for f in feats)
    assert [p.name for p in (tmp_path / KEY[:32] / key[:2]).iterdir()] == [f"{key}.safetensors"]


def _png(path: Path, size=(8, 8), value=0, mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new(mode, size, (value,) * len(mode)).save(path)


def test_one_reader_for_render_folders_and_image_folders(tmp_path):
    # a folder of images as other tools write them (Toys4K: 000.png ...), read in name order
    flat = tmp_path / "toys"
    for i, v in ((1, 10), (0, 20), (2, 30)):
        _png(flat / f"{i:03d}.png", value=v)
    (flat / "notes.txt").write_text("not a view")
    assert [p.name for p in view_files(flat, "rgb")] == ["000.png", "001.png", "002.png"]
    assert [np.asarray(im)[0, 0, 0] for im in load_views(flat, "rgb")] == [20, 10, 30]
    # <folder>/<mode>/ images (what training read from folders without meta.json), and its ViewCache tensor
    by_mode = tmp_path / "item"
    for i in range(2):
        _png(by_mode / "geometry" / f"{i:02d}.png", size=(16, 16), value=50 + i)
    _png(by_mode / "grid_geometry.png", size=(32, 16))
    assert [p.name for p in view_files(by_mode, "geometry")] == ["00.png", "01.png"]
    t = ViewCache(["geometry"], 8)(by_mode)
    assert t.shape == (2, 3, 8, 8) and t.dtype.is_floating_point is False and int(t[1, 0, 0, 0]) == 51
    # the grids of a render folder's layout are never taken for the views of a mode it lacks
    with pytest.raises(RenderFolderError, match="not a render folder"):
        view_files(by_mode, "normal")
    # sizes checked from the header before decoding; unreadable images named
    big = tmp_path / "big"
    _png(big / "0.png", size=(64, 64))
    with pytest.raises(ViewImageError, match="64x64 pixels exceeds max_texture_pixels=1000"):
        view_files(big, "rgb", max_pixels=1000)
    (big / "1.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ViewImageError, match="1.png: not a readable image"):
        view_files(big, "rgb", max_pixels=10**6)
    # alpha: composited over a background when one is given, else dropped
    rgba = tmp_path / "a.png"
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., 0], a[0, :, 3] = 200, 255
    PIL.Image.fromarray(a, "RGBA").save(rgba)
    assert np.asarray(open_view(rgba, background=(0, 0, 255)))[1, 0].tolist() == [0, 0, 255]
    assert np.asarray(open_view(rgba))[1, 0].tolist() == [200, 0, 0]
    assert open_view(rgba, "mask").mode == "L"
