"""The feature cache: what an image network gives for an item's views, computed once and kept on disk.

Reward-model training on a frozen tower (:mod:`rewardkit.train.features`) and generator evaluation
(:mod:`rewardkit.eval.generation.features`) both encode rendered views with a fixed network and read the
features back on the next epoch, stage or run. One entry is the float32 features ``[rows, dim]`` of one
item (a render folder, a folder of reference images) under one extractor. Its key has two parts:

- the **extractor key**, a hex digest the caller computes over everything that changes the features of the
  same pixels (architecture, weights, preprocessing, tiling); it names a folder of the cache;
- the **views key** (:func:`views_key`): sha256 over the item's view files (each file's sha256, in order)
  and how they are decoded (size, view selection, compositing background: a small dict). Together they fix
  the pixels the network sees; paths do not count (renders that move keep their features; a re-render with
  other bytes gets new ones), and a cached item is found without decoding its images.

Layout: ``<root>/<extractor key[:32]>/<views key[:2]>/<views key>.safetensors``, one tensor ``features``.

Hostile or damaged folders: names are built from hex digests only (checked), an entry is read only when its
folder resolves inside the cache root, it is a regular file (not a link) of at most ``max_entry_bytes``
(read whole, never more), and it holds exactly one float32 ``[rows, dim]`` tensor with the rows expected;
anything else is a miss, encoded again and overwritten. Writes are atomic (a temporary file in the entry's
folder, then a rename), so a crash or a concurrent writer leaves a whole entry or none. Memory is bounded
too: :func:`cached_features` holds the decoded views of about ``batch_size`` rows at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewardkit.errors import RewardkitError

KEY_VERSION = b"rewardkit.view-files/1"
"""Hashed first into every views key: a change of the key scheme changes every key."""
DEFAULT_MAX_ENTRY_BYTES = 32 << 20
_HEX = re.compile(r"[0-9a-f]{32,128}")


class FeatureCacheError(RewardkitError, ValueError):
    """A feature cache folder that cannot be used (a key that is not a hex digest, a folder leading out of it)."""


def views_key(files: Iterable[str | Path], decode: Mapping[str, Any]) -> str:
    """sha256 of an item's view ``files`` (each file's sha256, in order) and of ``decode``, the settings that
    turn them into the pixels an extractor sees (a JSON-able dict, e.g. ``{"size": 128}``)."""
    h = hashlib.sha256(KEY_VERSION)
    h.update(json.dumps(decode, sort_keys=True).encode())
    for f in files:
        d = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                d.update(block)
        h.update(d.digest())
    return h.hexdigest()


class FeatureCache:
    """The cache folder of one extractor: ``get`` / ``put`` features ``[rows, dim]`` by views key.

    ``root``: the cache's folder (shared by every extractor); ``extractor_key``: a hex digest (see the module
    docstring). ``hits`` and ``misses`` count :meth:`get`'s answers."""

    def __init__(self, root: str | Path, extractor_key: str, *, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES):
        if not _HEX.fullmatch(extractor_key):
            raise FeatureCacheError(f"feature cache: extractor key {extractor_key!r} is not a hex digest")
        self.root = Path(root).expanduser()
        self.dir = self.root / extractor_key[:32]
        self.max_entry_bytes = int(max_entry_bytes)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        """The entry file of views key ``key`` (a hex digest)."""
        if not _HEX.fullmatch(key):
            raise FeatureCacheError(f"feature cache: views key {key!r} is not a hex digest")
        return self.dir / key[:2] / f"{key}.safetensors"

    def _inside(self, folder: Path) -> bool:
        try:
            return folder.resolve().is_relative_to(self.root.resolve())
        except OSError:
            return False

    def _read(self, path: Path) -> bytes | None:
        if not self._inside(path.parent):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_entry_bytes:
                return None
            return fh.read(self.max_entry_bytes + 1)

    def get(self, key: str, rows: int) -> np.ndarray | None:
        """The features of ``key`` if a valid entry with ``rows`` rows is there (see the module docstring)."""
        data = self._read(self.path(key))
        feats = None
        if data is not None and len(data) <= self.max_entry_bytes:
            from safetensors.numpy import load

            try:
                tensors = load(data)
            except Exception:  # a torn or foreign file: a miss (it is rewritten atomically)
                tensors = {}
            a = tensors.get("features") if len(tensors) == 1 else None
            if a is not None and a.dtype == np.float32 and a.ndim == 2 and a.shape[0] == rows and a.shape[1] > 0:
                feats = np.array(a)  # writable, not a view of the file's bytes
        if feats is None:
            self.misses += 1
        else:
            self.hits += 1
        return feats

    def put(self, key: str, features: Any) -> None:
        """Write the features of ``key`` (float32 ``[rows, dim]``) atomically."""
        from safetensors.numpy import save

        path = self.path(key)
        for _ in range(2):  # before creating the folder (no folder made outside) and after (what was made)
            if not self._inside(path.parent):
                raise FeatureCacheError(f"{path.parent}: leads out of the feature cache {self.root}")
            path.parent.mkdir(parents=True, exist_ok=True)
        data = save({"features": np.ascontiguousarray(np.asarray(features, dtype=np.float32))})
        if len(data) > self.max_entry_bytes:
            raise FeatureCacheError(f"feature cache: an entry of {len(data)} bytes is over max_entry_bytes="
                                    f"{self.max_entry_bytes}")
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@dataclass
class Encoder:
    """One extractor as :func:`cached_features` runs it: its ``cache``; ``encode``, a batch of rows of one
    shape -> features ``[B, dim]`` (numpy or a CPU tensor); ``prepare``, an item's views -> the rows it
    encodes (default: the views themselves; e.g. a model's tiles of them), ``rows_per_view`` of them."""

    cache: FeatureCache
    encode: Callable[[list], Any]
    prepare: Callable[[Sequence[np.ndarray]], Sequence[Any]] | None = None
    rows_per_view: int = 1


def _encode(encode: Callable[[list], Any], rows: list) -> np.ndarray:
    """``rows`` encoded in runs of one shape (images of other sizes are not stacked together)."""
    out, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or tuple(rows[i].shape) != tuple(rows[start].shape):
            out.append(np.asarray(encode(rows[start:i]), dtype=np.float32).reshape(i - start, -1))
            start = i
    return np.concatenate(out)


class _Queue:
    """Rows waiting for one encoder, encoded in full batches; an item is done once all its rows are. Items of
    the same views key are encoded once (the first), the others wait for it."""

    def __init__(self, enc: Encoder, out: dict):
        self.enc, self.out = enc, out
        self.items: list[tuple[str, int]] = []  # (views key, rows) in encoding order
        self.waiting: dict[str, list[Hashable]] = {}  # views key -> the names that get its features
        self.done: dict[str, np.ndarray] = {}  # views key -> features, for this call
        self.rows: list = []
        self.feats: list[np.ndarray] = []
        self.n_feats = 0

    def add(self, name: Hashable, key: str, n_views: int) -> bool:
        """``name``'s features from this call or the cache; False when they must be encoded (:meth:`queue`)."""
        if key in self.done or key in self.waiting:  # the same view files as an item before it
            self.enc.cache.hits += 1
            if key in self.done:
                self.out[name] = self.done[key]
            else:
                self.waiting[key].append(name)
            return True
        hit = self.enc.cache.get(key, n_views * self.enc.rows_per_view)
        if hit is not None:
            self.out[name] = self.done[key] = hit
        return hit is not None

    def queue(self, name: Hashable, key: str, views: Sequence[np.ndarray]) -> None:
        rows = list(self.enc.prepare(views) if self.enc.prepare is not None else views)
        if len(rows) != len(views) * self.enc.rows_per_view:
            raise ValueError(f"{name}: {len(rows)} rows from {len(views)} views, expected {self.enc.rows_per_view} "
                             "per view")
        self.waiting[key] = [name]
        self.items.append((key, len(rows)))
        self.rows.extend(rows)

    def run(self, batch_size: int, final: bool) -> None:
        while len(self.rows) >= batch_size or (final and self.rows):
            batch, self.rows = self.rows[:batch_size], self.rows[batch_size:]
            f = _encode(self.enc.encode, batch)
            self.feats.append(f)
            self.n_feats += len(f)
        while self.items and self.items[0][1] <= self.n_feats:
            key, n = self.items.pop(0)
            flat = np.concatenate(self.feats) if len(self.feats) > 1 else self.feats[0]
            f, rest = flat[:n].copy(), flat[n:]
            self.feats, self.n_feats = ([rest] if len(rest) else []), len(rest)
            self.enc.cache.put(key, f)
            self.done[key] = f
            for name in self.waiting.pop(key):
                self.out[name] = f


def cached_features(items: Mapping[Hashable, Sequence[str | Path]], decode: Callable[[Hashable], Sequence[Any]],
                    encoders: Mapping[str, Encoder], *, decode_key: Mapping[str, Any], batch_size: int = 32,
                    progress: Callable[[Hashable, int], None] | None = None) -> dict[str, dict[Any, np.ndarray]]:
    """``{encoder: {name: features [rows, dim]}}`` for every item: ``items`` maps a name to its view files,
    keyed with ``decode_key`` (:func:`views_key`) and looked up in each encoder's cache; an item some encoder
    misses is decoded once (``decode(name)``: its views, e.g. uint8 ``[H, W, 3]`` arrays) and encoded in
    batches of ``batch_size`` rows across items (items with the same key once), then written to the cache.
    ``cache.hits`` counts the items not encoded, ``cache.misses`` those encoded. ``progress(name, n_views)``
    is called after each item."""
    out: dict[str, dict[Any, np.ndarray]] = {k: {} for k in encoders}
    queues = {k: _Queue(enc, out[k]) for k, enc in encoders.items()}
    for name, files in items.items():
        key = views_key(files, decode_key)
        missing = [q for q in queues.values() if not q.add(name, key, len(files))]
        if missing:
            views = decode(name)
            if len(views) != len(files):
                raise ValueError(f"{name}: decoded {len(views)} views from {len(files)} files")
            for q in missing:
                q.queue(name, key, views)
                q.run(batch_size, final=False)
        if progress is not None:
            progress(name, len(files))
    for q in queues.values():
        q.run(batch_size, final=True)
    return out


__all__ = ["DEFAULT_MAX_ENTRY_BYTES", "Encoder", "FeatureCache", "FeatureCacheError", "KEY_VERSION",
           "cached_features", "views_key"]
