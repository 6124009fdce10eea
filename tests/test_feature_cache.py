"""The one feature cache (rewardkit.render.features) and the one reader of view images (rewardkit.render's
``view_files`` / ``open_view`` / ``load_views``), which training on a frozen tower and generator evaluation
both use: the key follows the view files and their decoding, a cached item is not even decoded, memory stays
at about one batch, and a damaged or hostile cache folder is never read outside itself nor trusted."""

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
DECODE = {"mode": "rgb"}


def _item(folder: Path, seed: int, n: int = 3, size: int = 8) -> list[Path]:
    """An item's view files: ``n`` random RGB PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:02d}.png")
        PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _decoder(items: dict, log: list | None = None):
    def decode(name):
        if log is not None:
            log.append(("decode", name))
        return [np.asarray(open_view(p)) for p in items[name]]
    return decode


def _encode(log: list | None = None):
    """A real (tiny) extractor: per-view channel means and std, float32 [B, 6]."""
    def encode(batch):
        x = np.stack(batch).astype(np.float32)
        if log is not None:
            log.append(("encode", len(batch)))
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
    return encode


def test_features_are_encoded_once_in_full_batches_and_read_back_without_decoding(tmp_path):
    items = {f"item{i}": _item(tmp_path / "r" / f"item{i}", i) for i in range(5)}
    log: list = []
    cache = FeatureCache(tmp_path / "c", KEY)
    out = cached_features(items, _decoder(items, log), {"x": Encoder(cache, _encode(log))}, decode_key=DECODE,
                          batch_size=4)["x"]
    assert (cache.hits, cache.misses) == (0, 5)
    # 15 views in batches of 4 (the last one shorter), the first batch encoded before the third item is decoded
    assert [n for what, n in log if what == "encode"] == [4, 4, 4, 3]
    assert log.index(("encode", 4)) < log.index(("decode", "item2"))
    for name, files in items.items():
        assert out[name].dtype == np.float32 and out[name].shape == (3, 6)
        assert np.allclose(out[name], _encode()([np.asarray(open_view(p)) for p in files]))
    # another run (a new cache object) on the files moved elsewhere: every entry read back, nothing decoded
    moved = {}
    for name, files in items.items():
        moved[name] = [tmp_path / "moved" / name / f.name for f in files]
        moved[name][0].parent.mkdir(parents=True)
        for f, g in zip(files, moved[name]):
            g.write_bytes(f.read_bytes())
    again = FeatureCache(tmp_path / "c", KEY)
    log.clear()
    back = cached_features(moved, _decoder(moved, log), {"x": Encoder(again, _encode(log))}, decode_key=DECODE,
                           batch_size=4)["x"]
    assert (again.hits, again.misses) == (5, 0) and log == []
    assert all(np.array_equal(back[k], out[k]) for k in items)
    # one pixel changed, or another decoding: another key; another extractor: another folder
    img = np.asarray(PIL.Image.open(items["item0"][1])).copy()
    img[0, 0, 0] ^= 1
    PIL.Image.fromarray(img).save(tmp_path / "changed.png")
    key = views_key(items["item0"], DECODE)
    assert views_key([items["item0"][0], tmp_path / "changed.png", items["item0"][2]], DECODE) != key
    assert views_key(items["item0"], {"mode": "rgb", "background": [0, 0, 0]}) != key
    assert FeatureCache(tmp_path / "c", "cd" * 32).get(key, 3) is None
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [KEY[:32]]
    assert not list(tmp_path.rglob("*.tmp"))


def test_items_with_the_same_files_are_encoded_once(tmp_path):
    a = _item(tmp_path / "a", 0)
    copy = _item(tmp_path / "a-copy", 0)  # the same bytes elsewhere
    items = {"a": a, "b": _item(tmp_path / "b", 1), "a-copy": copy, "a-again": a}
    log: list = []
    cache = FeatureCache(tmp_path / "c", KEY)
    out = cached_features(items, _decoder(items, log), {"x": Encoder(cache, _encode(log))}, decode_key=DECODE,
                          batch_size=64)["x"]
    assert (cache.hits, cache.misses) == (2, 2) and sum(n for what, n in log if what == "encode") == 6
    assert [n for what, n in log if what == "decode"] == ["a", "b"]
    assert np.array_equal(out["a"], out["a-copy"]) and np.array_equal(out["a"], out["a-again"])
    assert set(out) == set(items)


def test_views_of_other_sizes_are_encoded_apart_and_each_item_is_decoded_once(tmp_path):
    items = {"small": _item(tmp_path / "s", 0, 2, 8), "large": _item(tmp_path / "l", 1, 2, 16),
             "mixed": [_item(tmp_path / "m1", 2, 1, 8)[0], _item(tmp_path / "m2", 3, 1, 16)[0]]}
    log: list = []
    halves = Encoder(FeatureCache(tmp_path / "c", "cd" * 32), _encode(), prepare=lambda vs: [v[::2, ::2] for v in vs])
    out = cached_features(items, _decoder(items, log), {"plain": Encoder(FeatureCache(tmp_path / "c", KEY), _encode()),
                                                        "halves": halves}, decode_key=DECODE, batch_size=3)
    assert log == [("decode", "small"), ("decode", "large"), ("decode", "mixed")]
    for name, files in items.items():
        views = [np.asarray(open_view(p)) for p in files]
        assert np.allclose(out["plain"][name], np.concatenate([_encode()([v]) for v in views]))
        assert np.allclose(out["halves"][name], np.concatenate([_encode()([v[::2, ::2]]) for v in views]))
    two = Encoder(FeatureCache(tmp_path / "c", "ef" * 32), _encode(), prepare=lambda vs: [*vs, *vs], rows_per_view=1)
    with pytest.raises(ValueError, match="6 rows from 3 views, expected 1 per view"):
        cached_features({"x": _item(tmp_path / "x", 4)}, _decoder({"x": _item(tmp_path / "x", 4)}), {"two": two},
                        decode_key=DECODE)


def test_a_damaged_or_hostile_cache_folder_is_a_miss_and_never_read_outside(tmp_path):
    root, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    files = _item(tmp_path / "r", 0)
    key = views_key(files, DECODE)
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
    out = cached_features({"a": files}, _decoder({"a": files}), {"x": Encoder(fresh(), _encode())},
                          decode_key=DECODE)["x"]["a"]
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
        other.put("12" * 32, good)
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
    key = "34" * 32
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
