"""Cached view features for training on a frozen image tower.

With the image trunk frozen (``unlocked_image_blocks=0``; see ``StageRewardModel.frozen_image_trunk``) each
rendered view is encoded once. ``FeatureCache`` keys a candidate's features by

- the **render hash**: sha256 of the decoded view pixels it reads (modes, view selection and size included),
- the **tower key**: sha256 of the trunk's architecture, input preprocessing and frozen weights,

and stores them as one small safetensors file per candidate under ``<cache_dir>/<tower key>/``. A second
epoch, the other stage (where it reads the same views), a re-run of the pipeline, or another training run
on the same renders reads the file instead of running the tower again. Nothing in the key depends on paths,
so renders that move keep their features, and a re-render with different pixels gets new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from rewardkit.models.stage import StageRewardModel
from rewardkit.train.views import ViewCache

DEFAULT_CACHE_DIR = "~/.cache/rewardkit/view_features"


def default_cache_dir() -> Path:
    """``$REWARDKIT_FEATURE_CACHE`` if set, else ``~/.cache/rewardkit/view_features``."""
    return Path(os.environ.get("REWARDKIT_FEATURE_CACHE") or DEFAULT_CACHE_DIR).expanduser()


def tower_key(model: StageRewardModel) -> str:
    """sha256 over the frozen trunk: architecture, preprocessing and every weight and buffer."""
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


def render_hash(views: torch.Tensor) -> str:
    """sha256 of a candidate's decoded views (uint8 [V, 3, S, S]) and their shape."""
    h = hashlib.sha256(str(tuple(views.shape)).encode())
    h.update(views.contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """render folder -> frozen-trunk features [V, F] (float32), from memory, disk, or the tower.

    ``views``: the ViewCache that reads the candidate's views (its modes, size and view selection define what
    is encoded). ``prefetch(render_dirs)`` encodes every missing candidate in batches of ``batch_size`` views;
    ``stats`` counts candidates read from disk (``hits``) and encoded (``encoded``).
    """

    def __init__(self, model: StageRewardModel, views: ViewCache, cache_dir: str | Path | None = None,
                 batch_size: int = 64):
        self.model, self.views = model, views
        self.dir = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / tower_key(model)[:32]
        self.batch_size = int(batch_size)
        self._mem: dict[str, torch.Tensor] = {}
        self.stats = {"hits": 0, "encoded": 0}

    def _tiled(self, views: torch.Tensor) -> torch.Tensor:
        """A candidate's views [V_total, 3, S, S] (modes in equal blocks) as the model sees them: with
        ``view_tiles`` its tiles (:meth:`StageRewardModel.tile_views`), otherwise unchanged."""
        if not self.model.config.view_tiles:
            return views
        n_modes = len(self.model.modes)
        x, _ = self.model.tile_views(views.unsqueeze(0), [views.shape[0] // n_modes] * n_modes)
        return x[0]

    def _file(self, rhash: str) -> Path:
        return self.dir / rhash[:2] / f"{rhash}.safetensors"

    def _load(self, rhash: str) -> torch.Tensor | None:
        f = self._file(rhash)
        if not f.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(f))["features"]
        except Exception:  # a torn file: encode again (it is rewritten atomically)
            return None

    def _save(self, rhash: str, feats: torch.Tensor) -> None:
        from safetensors.torch import save_file

        f = self._file(rhash)
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=f.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": feats.contiguous()}, tmp)
            os.replace(tmp, f)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def prefetch(self, render_dirs: Iterable[str | Path]) -> None:
        """Make sure every candidate's features are in memory, encoding the ones no cache file holds."""
        todo: list[tuple[str, str, torch.Tensor]] = []
        for d in dict.fromkeys(str(x) for x in render_dirs):
            if d in self._mem:
                continue
            views = self.views(d)
            rh = render_hash(views)
            views = self._tiled(views)
            hit = self._load(rh)
            if hit is not None and hit.shape[0] == views.shape[0]:
                self._mem[d] = hit
                self.stats["hits"] += 1
            else:
                todo.append((d, rh, views))
        if not todo:
            return
        flat = torch.cat([v for _, _, v in todo])
        out = []
        for i in range(0, flat.shape[0], self.batch_size):
            out.append(self.model.encode_trunk(flat[i:i + self.batch_size]).float().cpu())
        feats = torch.cat(out)
        start = 0
        for d, rh, v in todo:
            f = feats[start:start + v.shape[0]].clone()
            start += v.shape[0]
            self._save(rh, f)
            self._mem[d] = f
            self.stats["encoded"] += 1

    def __call__(self, render_dir: str | Path) -> torch.Tensor:
        key = str(render_dir)
        if key not in self._mem:
            self.prefetch([key])
        return self._mem[key]


__all__ = ["DEFAULT_CACHE_DIR", "FeatureCache", "default_cache_dir", "render_hash", "tower_key"]
