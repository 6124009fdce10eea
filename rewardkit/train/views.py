"""Render folders read into view tensors: :class:`ViewCache` (one item's views as a uint8 tensor, cached), used
by the preference dataset (:mod:`rewardkit.train.data`) and the frozen tower's features
(:mod:`rewardkit.train.features`). The folders are read by :func:`rewardkit.render.load_views` (a render
folder, or ``<folder>/<mode>/`` images in name order as other tools write them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewardkit.render.folder import load_views


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
            images = load_views(render_dir, mode)
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
