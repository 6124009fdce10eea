"""Render folders read into view tensors: :class:`ViewCache` (one item's views as a uint8 tensor, cached), used
by the preference dataset (:mod:`rewardkit.train.data`) and the frozen tower's features
(:mod:`rewardkit.train.features`). The folders are read by rewardkit's one reader, :func:`rewardkit.render.view_files` /
:func:`~rewardkit.render.open_view` (a render folder, or ``<folder>/<mode>/`` images in name order as other
tools write them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewardkit.render.folder import open_view, view_files


class ViewCache:
    """Loads and caches one item's views as a uint8 tensor [V_total, 3, S, S] (modes concatenated)."""

    def __init__(self, modes: Sequence[str], image_size: int, views: Sequence[int] | None = None,
                 max_items: int | None = 4096):
        self.modes, self.size = list(modes), int(image_size)
        self.views = list(views) if views is not None else None
        self.max_items = max_items
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def decoding(self) -> dict:
        """What turns an item's view files into its tensor (the feature cache's ``decode_key``)."""
        return {"modes": self.modes, "size": self.size, "views": self.views, "resize": "bicubic"}

    def files(self, render_dir: str | Path) -> list[Path]:
        """The view files read for an item, in tensor order (modes in blocks; :attr:`views` selected)."""
        out = []
        for mode in self.modes:
            paths = view_files(render_dir, mode)
            if self.views is not None:
                if any(i >= len(paths) for i in self.views):
                    raise IndexError(f"{render_dir}: {mode} has {len(paths)} views; asked for {self.views}")
                paths = [paths[i] for i in self.views]
            out.extend(paths)
        return out

    def __call__(self, render_dir: str | Path) -> torch.Tensor:
        key = str(render_dir)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        tensors = []
        for path in self.files(render_dir):
            im = open_view(path)
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.BICUBIC)
            tensors.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
        out = torch.stack(tensors)
        if self.max_items is None or len(self._cache) < self.max_items:
            self._cache[key] = out
        return out


__all__ = ["ViewCache"]
