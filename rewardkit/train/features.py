"""Training on a frozen image tower from cached view features.

With the image trunk frozen (``unlocked_image_blocks=0``; see ``StageRewardModel.frozen_image_trunk``) each
rendered view is encoded once. :class:`TowerFeatures` keeps a candidate's trunk features in memory and in the
one feature cache of rewardkit (:mod:`rewardkit.render.features`), keyed by

- the candidate's **views** (:func:`rewardkit.render.features.views_key`: the view files it reads and how
  they are decoded: modes, view selection and size),
- the **tower key** (:func:`tower_key`): sha256 of the trunk's architecture, input preprocessing, tiling and
  frozen weights.

A second epoch, the other stage (where it reads the same views), a re-run of the pipeline, or another
training run on the same renders reads the entry instead of running the tower again. Nothing in the key
depends on paths, so renders that move keep their features, and a re-render with different bytes gets new
ones. The cache folder is ``feature_cache_dir``, else ``$REWARDKIT_FEATURE_CACHE``, else
``~/.cache/rewardkit/view_features``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from rewardkit.models.stage import StageRewardModel
from rewardkit.render.features import Encoder, FeatureCache, cached_features
from rewardkit.train.views import ViewCache

DEFAULT_CACHE_DIR = "~/.cache/rewardkit/view_features"


def default_cache_dir() -> Path:
    """``$REWARDKIT_FEATURE_CACHE`` if set, else ``~/.cache/rewardkit/view_features``."""
    return Path(os.environ.get("REWARDKIT_FEATURE_CACHE") or DEFAULT_CACHE_DIR).expanduser()


def tower_key(model: StageRewardModel) -> str:
    """sha256 over the frozen trunk: architecture, preprocessing, tiling and every weight and buffer."""
    trunk = model.frozen_image_trunk()
    if trunk is None:
        raise ValueError("feature cache: the image trunk trains (set unlocked_image_blocks=0 to freeze it)")
    h = hashlib.sha256()
    h.update(json.dumps({"backbone": model.config.backbone.name, "trunk": type(trunk).__name__,
                         "preprocess": model.preprocess_cfg, "view_tiles": model.config.view_tiles,
                         "tiles_only": model.config.tiles_only}, sort_keys=True).encode())
    for name, t in trunk.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TowerFeatures:
    """render folder -> frozen-trunk features [V, F] (float32), from memory, the feature cache, or the tower.

    ``views``: the ViewCache that reads the candidate's views (its modes, size and view selection define what
    is encoded). ``prefetch(render_dirs)`` encodes every missing candidate in batches of ``batch_size`` views;
    ``stats`` counts candidates read from the cache (``hits``) and encoded (``encoded``); ``dir`` is the
    tower's folder of the cache.
    """

    def __init__(self, model: StageRewardModel, views: ViewCache, cache_dir: str | Path | None = None,
                 batch_size: int = 64):
        self.model, self.views = model, views
        self.cache = FeatureCache(Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), tower_key(model))
        self.dir = self.cache.dir
        self.batch_size = int(batch_size)
        self._mem: dict[str, torch.Tensor] = {}

    @property
    def stats(self) -> dict[str, int]:
        return {"hits": self.cache.hits, "encoded": self.cache.misses}

    @property
    def rows_per_view(self) -> int:
        """Rows of features per view: 1, or with ``view_tiles: n`` the n x n tiles (and the whole view)."""
        n = self.model.config.view_tiles
        return 1 if not n else n * n + (0 if self.model.config.tiles_only else 1)

    def _decode(self, render_dir: str) -> list[np.ndarray]:
        """A candidate's views as uint8 [S, S, 3] arrays."""
        return list(self.views(render_dir).permute(0, 2, 3, 1).numpy())

    def _tiled(self, views: list[np.ndarray]) -> list[torch.Tensor]:
        """A candidate's views (modes in equal blocks) as the model sees them: with ``view_tiles`` its tiles
        (:meth:`StageRewardModel.tile_views`), otherwise unchanged; one [3, S, S] tensor per row."""
        x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2)
        if self.model.config.view_tiles:
            n_modes = len(self.model.modes)
            x = self.model.tile_views(x.unsqueeze(0), [x.shape[0] // n_modes] * n_modes)[0][0]
        return list(x)

    def _encode(self, rows: list[torch.Tensor]) -> np.ndarray:
        return self.model.encode_trunk(torch.stack(rows)).float().cpu().numpy()

    def prefetch(self, render_dirs: Iterable[str | Path]) -> None:
        """Make sure every candidate's features are in memory, encoding the ones the cache does not hold."""
        todo = {d: self.views.files(d) for d in dict.fromkeys(str(x) for x in render_dirs) if d not in self._mem}
        if not todo:
            return
        enc = Encoder(self.cache, self._encode, self._tiled, rows_per_view=self.rows_per_view)
        got = cached_features(todo, self._decode, {"tower": enc}, decode_key=self.views.decoding,
                              batch_size=self.batch_size)["tower"]
        self._mem.update((d, torch.from_numpy(f)) for d, f in got.items())

    def __call__(self, render_dir: str | Path) -> torch.Tensor:
        key = str(render_dir)
        if key not in self._mem:
            self.prefetch([key])
        return self._mem[key]


__all__ = ["DEFAULT_CACHE_DIR", "TowerFeatures", "default_cache_dir", "tower_key"]
