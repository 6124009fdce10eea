"""Baseline scorers behind the same interface as exported stage models, with weights from local files only.

- ``clip-multiview``: ``100 * cos(text(prompt), image(view))`` averaged over the views: the CLIP score of
  text-to-3D papers (AR3D-R1 evaluates it with OpenAI ViT-B/32 over 24 views).
- ``hps-multiview``: HPS v2.1 (open_clip ``ViT-H-14`` fine-tuned by tgxs002/HPSv2; the checkpoint file
  ``HPS_v2.1_compressed.pt`` is a ``{'state_dict': ...}`` torch file) scoring each view against the prompt
  as the cosine of the normalised features (no logit scale), and the **max over views**: AR3D-R1's
  ``R_HPM``. As in AR3D-R1's released ``reward_hps.py`` the running max starts at 0.0 (``floor=0.0``), so
  a negative cosine counts as 0.

Nothing is downloaded: ``weights`` must be a local file (open_clip state dict, ``{'state_dict': sd}``,
``module.``-prefixed keys or ``.safetensors``) or a folder holding one, read with
``torch.load(weights_only=True)``. ``arch`` may be any open_clip architecture name, a registered rewardkit
config (``rk-tiny``) or a path to an open_clip-style JSON model config (tests use a tiny one).

Both can be exported with ``save_pretrained(dir)`` and then load like any scorer directory
(``load_scorer(dir)``), so the CLI, the service and the RL adapters take them unchanged.

Preprocessing runs in torch (resize with the backbone's interpolation, antialiased, then CLIP
normalisation), so gradients flow to the view pixels. The original packages use PIL resizing; expect
small numeric differences from their scores.
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewardkit.scoring.base import BaseScorer, ScoreOutput, register_scorer_kind
from rewardkit.scoring.errors import ScorerError
from rewardkit.scoring.format import camera_protocol, load_weights


def resolve_arch(arch: str | os.PathLike) -> str:
    """An open_clip architecture name from a name or a JSON config path (registered on the fly)."""
    from rewardkit.models.backbone import register_model_config

    p = Path(str(arch)).expanduser()
    if str(arch).endswith(".json") and p.is_file():
        register_model_config(p)
        return p.stem
    register_model_config()
    return str(arch)


def _ensure_arch(name: str, open_clip_config: Mapping[str, Any] | None) -> None:
    """Make ``name`` known to open_clip, registering the config recorded in an exported scorer if needed."""
    import open_clip

    from rewardkit.models.backbone import register_model_config

    register_model_config()
    if open_clip.get_model_config(name) is not None:
        return
    if not open_clip_config:
        raise ScorerError(f"unknown open_clip architecture {name!r} and no model config recorded for it")
    d = Path(tempfile.mkdtemp(prefix="rewardkit-arch-"))
    (d / f"{name}.json").write_text(json.dumps(dict(open_clip_config)))
    register_model_config(d / f"{name}.json")


class _ClipBaseline(BaseScorer):
    """Shared code: an open_clip model scoring each view against the prompt."""

    kind = "clip-baseline"
    default_arch = "ViT-B-32"
    default_name = "clip"
    aggregation = "mean"
    scale = 1.0

    def __init__(self, clip_model: torch.nn.Module, *, arch: str, mode: str = "rgb", camera: Any = "orbit6",
                 render_size: int | None = None, render_config: Mapping[str, Any] | None = None,
                 name: str | None = None, floor: float | None = None, weights_source: str | None = None,
                 stage: str | None = None, description: str | None = None,
                 metrics: Mapping[str, Any] | None = None) -> None:
        from rewardkit.models.backbone import get_tokenizer, image_preprocess_cfg

        super().__init__(name=name or self.default_name, stage=stage, modes=[mode],
                         camera=camera_protocol(camera, size=render_size), render_config=render_config,
                         training_data={"weights": weights_source} if weights_source else None, metrics=metrics,
                         description=description)
        self.clip = clip_model.eval()
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.arch = arch
        self.floor = floor
        self.weights_source = weights_source
        self.tokenizer = get_tokenizer({"name": arch})
        self.preprocess_cfg = image_preprocess_cfg(self.clip)
        self._mean = torch.tensor(self.preprocess_cfg["mean"]).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess_cfg["std"]).view(1, 3, 1, 1)

    # ------------------------------------------------------------------------------------------------ #
    @classmethod
    def from_weights(cls, weights: str | os.PathLike, *, arch: str | os.PathLike | None = None, mode: str = "rgb",
                     camera: Any = "orbit6", render_size: int | None = None, name: str | None = None,
                     device: str | torch.device = "cpu", **kw: Any) -> "_ClipBaseline":
        """Build from a local weights file (or folder). ``arch`` overrides the architecture (name or JSON)."""
        from rewardkit.models.backbone import BackboneConfig, BackboneError, create_backbone

        path = Path(weights).expanduser()
        if not path.exists():
            raise ScorerError(f"{cls.kind}: weights file {path} not found (baselines load local files only; "
                              "nothing is downloaded)")
        arch_name = resolve_arch(arch or cls.default_arch)
        try:
            model = create_backbone(BackboneConfig(name=arch_name, pretrained=str(path)))
        except BackboneError as exc:
            raise ScorerError(f"{cls.kind}: {exc}") from exc
        return cls(model, arch=arch_name, mode=mode, camera=camera, render_size=render_size, name=name,
                   weights_source=str(path), **kw).to(device)

    @property
    def module(self) -> torch.nn.Module:
        return self.clip

    def to(self, device: str | torch.device) -> "_ClipBaseline":
        self.clip.to(device)
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        return self

    def _architecture_config(self) -> dict[str, Any]:
        import open_clip

        return {
            "architecture": "open_clip.CLIP",
            "backbone": {"name": self.arch, "pretrained": self.weights_source},
            "open_clip_config": open_clip.get_model_config(self.arch),
            "preprocess": dict(self.preprocess_cfg),
            "aggregation": self.aggregation,
            "scale": self.scale,
            "floor": self.floor,
        }

    @classmethod
    def _from_config(cls, cfg: Mapping[str, Any], weights: Path, where: Path) -> "_ClipBaseline":
        import open_clip

        arch = cfg.get("architecture") or {}
        name = (arch.get("backbone") or {}).get("name")
        if not name:
            raise ScorerError(f"{where}: config.json names no backbone architecture")
        _ensure_arch(name, arch.get("open_clip_config"))
        model = open_clip.create_model(name, pretrained=None, pretrained_text=False)
        load_weights(model, weights, where)
        modes = cfg.get("render_modes") or ["rgb"]
        return cls(model, arch=name, mode=modes[0], camera=cfg["camera_protocol"],
                   render_config=cfg.get("render_config"), name=cfg.get("name"), floor=arch.get("floor"),
                   weights_source=(arch.get("backbone") or {}).get("pretrained"), stage=cfg.get("stage"),
                   description=cfg.get("description"), metrics=cfg.get("metrics"))

    # ------------------------------------------------------------------------------------------------ #
    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """As the stage models' preprocess: large views a few at a time (bounded float32 memory)."""
        from rewardkit.models.preprocess import preprocess_views

        interp = self.preprocess_cfg.get("interpolation", "bicubic")
        return preprocess_views(images, int(self.preprocess_cfg["size"]), self._mean, self._std,
                                mode=interp if interp in ("bilinear", "bicubic") else "bilinear", center_crop=True)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def view_cosines(self, views: Any, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine of each view with its prompt, [B, V]."""
        x = views[self.modes[0]] if isinstance(views, Mapping) else views
        b, v = x.shape[:2]
        img = self.clip.encode_image(self._preprocess(x.flatten(0, 1)))
        img = F.normalize(img, dim=-1).view(b, v, -1)
        unique = list(dict.fromkeys(prompts))
        txt = self.encode_text(unique)[torch.tensor([unique.index(p) for p in prompts], device=img.device)]
        return torch.einsum("bvd,bd->bv", img, txt.to(img.dtype))

    @abstractmethod
    def _aggregate(self, per_view: torch.Tensor) -> torch.Tensor:
        """Per-view scores [B, V] -> one score per sample [B]."""

    def _forward(self, views: Any, prompts: Sequence[str], per_view: bool) -> ScoreOutput:
        cos = self.view_cosines(views, prompts) * self.scale
        scores = self._aggregate(cos)
        return ScoreOutput(scores=scores, per_view=cos if per_view else None)


@register_scorer_kind
class ClipMultiviewScorer(_ClipBaseline):
    """``100 * mean_v cos(prompt, view_v)``; default architecture ``ViT-B-32-quickgelu`` (OpenAI weights
    converted to an open_clip state dict); pass ``arch=`` for others (e.g. ``ViT-B-32`` for LAION weights)."""

    kind = "clip-multiview"
    default_arch = "ViT-B-32-quickgelu"
    default_name = "clip-multiview"
    aggregation = "mean"
    scale = 100.0

    def _aggregate(self, per_view: torch.Tensor) -> torch.Tensor:
        return per_view.mean(dim=1)


@register_scorer_kind
class HpsMultiviewScorer(_ClipBaseline):
    """HPS v2.1: ``max(floor, max_v cos(prompt, view_v))`` on open_clip ``ViT-H-14`` (AR3D-R1's R_HPM)."""

    kind = "hps-multiview"
    default_arch = "ViT-H-14"
    default_name = "hps-multiview"
    aggregation = "max"
    scale = 1.0

    def __init__(self, *args: Any, floor: float | None = 0.0, **kw: Any) -> None:
        super().__init__(*args, floor=floor, **kw)

    def _aggregate(self, per_view: torch.Tensor) -> torch.Tensor:
        best = per_view.max(dim=1).values
        return best.clamp(min=self.floor) if self.floor is not None else best


# the baselines ``load_baseline`` builds from a weights file (both are also registered scorer kinds)
BASELINES: dict[str, type[_ClipBaseline]] = {
    ClipMultiviewScorer.kind: ClipMultiviewScorer,
    HpsMultiviewScorer.kind: HpsMultiviewScorer,
}


def load_baseline(name: str, weights: str | os.PathLike, *, arch: str | os.PathLike | None = None,
                  **kw: Any) -> _ClipBaseline:
    """``load_baseline("hps-multiview", "HPS_v2.1_compressed.pt")``; ``arch`` overrides the architecture."""
    if name not in BASELINES:
        raise ScorerError(f"unknown baseline {name!r}; available: {', '.join(BASELINES)}")
    return BASELINES[name].from_weights(weights, arch=arch, **kw)


__all__ = ["BASELINES", "ClipMultiviewScorer", "HpsMultiviewScorer", "load_baseline", "resolve_arch"]
