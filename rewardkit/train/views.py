"""Render folders read into view tensors: :class:`ViewCache` (one item's views as a uint8 tensor, cached), used
by the preference dataset (:mod:`rewardkit.train.data`) and the frozen-feature cache
(:mod:`rewardkit.train.features`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _read_mode_pngs(render_dir: Path, mode: str) -> list[Image.Image]:
    """Views of one mode from a render folder: ``rewardkit.render.load_views`` when the folder has its
    metadata, else ``<render_dir>/<mode>/*.png`` in name order (folders written by other tools)."""
    try:
        from rewardkit.render import load_views  # imports pyrender; only the folder reader is used
    except Exception:  # pragma: no cover - render stack unavailable
        load_views = None
    if load_views is not None and (render_dir / "meta.json").exists():
        return load_views(render_dir, mode)
    files = sorted((render_dir / mode).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{render_dir}: no {mode} views ({render_dir / mode}/*.png)")
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(im.convert("RGB"))
    return out


class ViewCache:
    """Loads and caches one item's views as a uint8 tensor [V_total, 3, S, S] (modes concatenated)."""

    def __init__(self, modes: Sequence[str], image_size: int, views: Sequence[int] | None = None,
                 max_items: int | None = 4096):
        self.modes, self.size = list(modes), int(image_size)
        self.views = list(views) if views is not None else None
        self.max_items = max_items
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, render_dir: str | Path) -> torch.Tensor:
        key = str(render_dir)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        tensors = []
        for mode in self.modes:
            images = _read_mode_pngs(Path(render_dir), mode)
            if self.views is not None:
                bad = [i for i in self.views if i >= len(images)]
                if bad:
                    raise IndexError(f"{render_dir}: {mode} has {len(images)} views; asked for {self.views}")
                images = [images[i] for i in self.views]
            for im in images:
                if im.size != (self.size, self.size):
                    im = im.resize((self.size, self.size), Image.BICUBIC)
                tensors.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
        out = torch.stack(tensors)
        if self.max_items is None or len(self._cache) < self.max_items:
            self._cache[key] = out
        return out


__all__ = ["ViewCache"]
