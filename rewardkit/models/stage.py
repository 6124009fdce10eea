"""The per-stage multi-view reward model.

One class for both Hi-GRPO stages; ``StageModelConfig.modes`` decides what it sees (``global``:
``geometry``, optionally ``normal``; ``local``: ``rgb``). Each view goes through the open_clip image
tower, the views are fused by attention pooling with learned mode/view embeddings, and the reward is

    r = exp(logit_scale) · cos(fused image feature, prompt text feature) + quality_head(fused)

Forward contract (kept stable for ``rewardkit.scoring``)::

    reward = model(views, prompts)                      # -> FloatTensor [B]
    details = model(views, prompts, return_details=True)  # -> dict, see ``forward``

``views`` may also be cached features [B, V, F] of the frozen image trunk (``frozen_image_trunk``: the
training feature cache, ``rewardkit.train.features``); the rest of the tower (its projection) then runs.

``views``: a float tensor [B, V, 3, H, W] with RGB values in [0, 1] (uint8 in [0, 255] is accepted too),
views of all the model's modes concatenated mode-major (all views of ``modes[0]``, then ``modes[1]`` ...),
or a dict ``{mode: [B, V_mode, 3, H, W]}``. Resizing to the backbone's input size and CLIP normalisation
happen inside the model (differentiable). ``prompts``: a list of B strings, or token ids [B, L]; or pass
``text_features`` [B, D] (from ``encode_text``) instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rewardkit import __version__
from rewardkit import config as _config
from rewardkit.models.backbone import (
    BackboneConfig,
    create_backbone,
    freeze_backbone,
    freeze_frozen_norms,
    frozen_image_trunk,
    get_tokenizer,
    image_head_after_trunk,
    image_preprocess_cfg,
)
from rewardkit.models.fusion import AttentionViewPool, MeanViewPool
from rewardkit.models.preprocess import preprocess_views

STAGES = ("global", "local")
RENDER_MODES = ("rgb", "geometry", "normal")
DEFAULT_MODES: dict[str, list[str]] = {"global": ["geometry"], "local": ["rgb"]}
# The files of a stage model's training checkpoint (save_pretrained / from_pretrained). A scorer directory is a
# different on-disk format with its own names: rewardkit.scoring.format.CONFIG_FILE / WEIGHTS_FILE.
CHECKPOINT_WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_CONFIG_FILE = "config.json"


@dataclass
class StageModelConfig:
    """Architecture and freezing options of one stage's reward model."""

    stage: Literal["global", "local"] = "global"
    # Render modes the model consumes (a list, or "geometry,normal"); None -> the stage's default
    # (global: geometry, local: rgb).
    modes: list[str] | str | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # Freezing (HPS: --lock-text --lock-image-unlocked-groups N).
    lock_text: bool = True
    unlocked_text_layers: int = 0
    unlocked_image_blocks: int | None = None  # None: whole image tower trains; N: only the last N blocks
    train_image_head: bool = False  # with unlocked_image_blocks=0: the tower's projection still trains
    # Fusion.
    fusion: Literal["attention", "mean"] = "attention"
    fusion_heads: int = 1
    max_views: int = 32
    view_dropout: float = 0.0
    # Tiles (:func:`view_tiles`): 0 sees each view whole; n >= 2 also cuts each view's object (its bounding box
    # against the background) into an n x n grid of tiles, each at the tower's input size, as further views
    # of the same mode: surface texture at n times the resolution, with less of the silhouette in each input.
    view_tiles: int = 0
    tiles_only: bool = False  # with view_tiles: the tiles replace the whole views
    # Score heads.
    use_alignment: bool = True
    quality_head: bool = True
    quality_hidden: int = 0  # 0: a linear head; >0: one hidden layer of that width
    init_logit_scale: float | None = None  # None: the backbone's own exp(logit_scale), capped at 100
    learn_logit_scale: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.backbone, Mapping):
            self.backbone = _config.from_dict(BackboneConfig, self.backbone, key="backbone")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.modes is None:
            self.modes = list(DEFAULT_MODES[self.stage])
        if isinstance(self.modes, str):
            self.modes = [m.strip() for m in self.modes.split(",") if m.strip()]
        self.modes = list(self.modes)
        bad = [m for m in self.modes if m not in RENDER_MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {RENDER_MODES}, got {self.modes}")
        if self.stage == "global" and "rgb" in self.modes:
            raise ValueError("the global stage must not see rgb (texture) renders: use geometry and/or normal")
        if self.fusion not in ("attention", "mean"):
            raise ValueError(f"fusion must be 'attention' or 'mean', got {self.fusion!r}")
        if self.view_tiles < 0 or self.view_tiles == 1:
            raise ValueError(f"view_tiles must be 0 (whole views) or >= 2 (an n x n grid), got {self.view_tiles}")
        if self.tiles_only and not self.view_tiles:
            raise ValueError("tiles_only needs view_tiles >= 2")
        if not (0.0 <= self.view_dropout < 1.0):
            raise ValueError(f"view_dropout must be in [0, 1), got {self.view_dropout}")
        if not (self.use_alignment or self.quality_head):
            raise ValueError("at least one of use_alignment and quality_head must be on")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageModelConfig:
        """A StageModelConfig from plain data, strictly typed (:func:`rewardkit.config.from_dict`)."""
        return _config.from_dict(cls, d)


def object_box(view: torch.Tensor, threshold: float = 8 / 255) -> tuple[int, int, int, int]:
    """The square box (x0, y0, x1, y1) around the pixels of ``view`` [3, H, W] (floats in [0, 1]) that differ
    from its corner (background) colour by more than ``threshold``: centred on the object, kept inside the
    image; the whole view when nothing differs."""
    h, w = view.shape[-2:]
    fg = (view - view[:, :1, :1]).abs().amax(dim=0) > threshold
    ys, xs = torch.nonzero(fg, as_tuple=True)
    if ys.numel() == 0:
        return 0, 0, w, h
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = min(max(y1 - y0, x1 - x0), h, w)
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    top = min(max(cy - side // 2, 0), h - side)
    left = min(max(cx - side // 2, 0), w - side)
    return left, top, left + side, top + side


def view_tiles(views: torch.Tensor, n: int, size: int, *, keep_whole: bool = True) -> torch.Tensor:
    """One mode's views [..., V, 3, H, W] (floats in [0, 1]) -> [..., V', 3, size, size]: each view resized
    whole (unless ``keep_whole`` is false), then for each view in order the n x n tiles of its
    :func:`object_box`, row-major, each resized to ``size`` (V' = V·(1 + n²), or V·n² without the wholes)."""
    lead = views.shape[:-3]
    flat = views.reshape(-1, *views.shape[-3:]).float()
    tiles = []
    for v in flat:
        x0, y0, x1, y1 = object_box(v)
        crop = v[:, y0:y1, x0:x1].unsqueeze(0)
        grid = F.interpolate(crop, size=(n * size, n * size), mode="bilinear", align_corners=False, antialias=True)[0]
        tiles.append(grid.view(3, n, size, n, size).permute(1, 3, 0, 2, 4).reshape(n * n, 3, size, size))
    t = torch.stack(tiles).view(*lead[:-1], lead[-1] * n * n, 3, size, size) if tiles else flat.new_zeros(
        *lead[:-1], 0, 3, size, size)
    if not keep_whole:
        return t
    whole = flat if flat.shape[-2:] == (size, size) else F.interpolate(
        flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return torch.cat([whole.view(*lead, 3, size, size), t], dim=-4)


class StageRewardModel(nn.Module):
    """The reward model of one stage (``global``: structure from geometry renders; ``local``: texture and
    detail from rgb renders): a CLIP-style image/text backbone, attention pooling over the views
    (:class:`~rewardkit.models.fusion.AttentionViewPool` or a mean) and the reward
    ``exp(logit_scale) * cos(fused views, prompt) + quality_head(fused)`` per sample (module docstring). Trained by :class:`rewardkit.train.RewardModelModule`; ``save_pretrained``/``from_pretrained``
    are its training checkpoint; :class:`rewardkit.scoring.Scorer` wraps it with its camera protocol and
    render settings to score meshes."""

    def __init__(self, config: StageModelConfig | Mapping[str, Any]):
        super().__init__()
        if isinstance(config, Mapping):
            config = StageModelConfig.from_dict(config)
        self.config = config
        self.backbone = create_backbone(config.backbone)
        self.tokenizer = get_tokenizer(config.backbone)
        freeze_backbone(self.backbone, lock_text=config.lock_text, unlocked_text_layers=config.unlocked_text_layers,
                        unlocked_image_blocks=config.unlocked_image_blocks,
                        train_image_head=config.train_image_head)
        pp = image_preprocess_cfg(self.backbone)
        self.preprocess_cfg = pp
        self.register_buffer("pixel_mean", torch.tensor(pp["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pp["std"]).view(1, 3, 1, 1), persistent=False)
        dim = self._embed_dim()
        self.embed_dim = dim
        if config.fusion == "attention":
            self.fusion = AttentionViewPool(dim, num_modes=len(config.modes), max_views=config.max_views,
                                            heads=config.fusion_heads, view_dropout=config.view_dropout)
        else:
            self.fusion = MeanViewPool(view_dropout=config.view_dropout)
        if config.init_logit_scale is None:
            init = float(self.backbone.logit_scale.detach().exp().clamp(max=100.0)) if hasattr(
                self.backbone, "logit_scale") else 1 / 0.07
        else:
            init = float(config.init_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init)), requires_grad=config.learn_logit_scale)
        if config.quality_head:
            if config.quality_hidden > 0:
                last = nn.Linear(config.quality_hidden, 1)
                self.quality = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, config.quality_hidden), nn.GELU(), last)
            else:
                last = nn.Linear(dim, 1)
                self.quality = nn.Sequential(nn.LayerNorm(dim), last)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        else:
            self.quality = None

    # ----------------------------------------------------------------------------------------------- #
    @property
    def stage(self) -> str:
        return self.config.stage

    @property
    def modes(self) -> list[str]:
        return list(self.config.modes)

    @property
    def image_size(self) -> int:
        """The image tower's input size in pixels."""
        return int(self.preprocess_cfg["size"])

    @property
    def load_size(self) -> int:
        """The size to read training views at: the tower's input, times n with ``view_tiles`` = n (each tile
        then reaches the tower at the resolution it was rendered at)."""
        return self.image_size * max(1, self.config.view_tiles)

    def train(self, mode: bool = True) -> StageRewardModel:
        """As ``nn.Module.train``; frozen batch-norm layers of the image tower stay in eval mode."""
        super().train(mode)
        if mode:
            freeze_frozen_norms(self.backbone)
        return self

    def frozen_image_trunk(self) -> nn.Module | None:
        """The frozen part of the image tower whose per-view outputs can be cached (None if it trains)."""
        return frozen_image_trunk(self.backbone)

    @torch.no_grad()
    def encode_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] views -> [N, F] outputs of :meth:`frozen_image_trunk` (eval mode, no gradients)."""
        trunk = self.frozen_image_trunk()
        if trunk is None:
            raise ValueError("the image trunk trains (unlocked_image_blocks != 0): its features cannot be cached")
        was = trunk.training
        trunk.eval()
        try:
            return trunk(self.preprocess(images))
        finally:
            trunk.train(was)

    def _embed_dim(self) -> int:
        with torch.no_grad():
            x = torch.zeros(1, 3, self.image_size, self.image_size)
            was = self.backbone.training
            self.backbone.eval()
            d = self.backbone.encode_image(x).shape[-1]
            self.backbone.train(was)
        return int(d)

    def _text_trainable(self) -> bool:
        return any(p.requires_grad for n, p in self.backbone.named_parameters()
                   if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias"))

    # ----------------------------------------------------------------------------------------------- #
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        return self.tokenizer(list(prompts))

    def encode_text(self, prompts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Normalised prompt features [B, D]."""
        tokens = prompts if isinstance(prompts, torch.Tensor) else self.tokenize(prompts)
        tokens = tokens.to(self.logit_scale.device)
        if self._text_trainable():
            return self.backbone.encode_text(tokens, normalize=True)
        with torch.no_grad():
            return self.backbone.encode_text(tokens, normalize=True)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] RGB in [0, 1] (or uint8) -> resized, CLIP-normalised backbone input (differentiable).

        Views larger than the tower's input are converted and resized a few at a time (at most
        ``PREPROCESS_CHUNK_PIXELS`` source pixels per step), so a batch of 1024² uint8 renders never exists
        as one float32 copy (4 bytes a channel) beside its resized result."""
        return preprocess_views(images, self.image_size, self.pixel_mean, self.pixel_std)

    def _stack_views(self, views: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> views [B, V, 3, H, W], mode_index [V], view_index [V]."""
        modes = self.modes
        if isinstance(views, Mapping):
            missing = [m for m in modes if m not in views]
            if missing:
                raise ValueError(f"{self.stage} model needs render modes {modes}; missing {missing}")
            parts = [views[m] for m in modes]
            counts = [p.shape[1] for p in parts]
            if len({tuple(p.shape[-2:]) for p in parts}) > 1:
                s = self.image_size
                parts = [p if p.shape[-2:] == (s, s) else F.interpolate(
                    p.flatten(0, 1).float() / (255.0 if p.dtype == torch.uint8 else 1.0), size=(s, s),
                    mode="bilinear", antialias=True).view(*p.shape[:3], s, s) for p in parts]
            x = torch.cat(parts, dim=1)
        else:
            x = views
            if x.dim() == 4:  # a single mesh [V, 3, H, W]
                x = x.unsqueeze(0)
            if x.dim() != 5 or x.shape[2] != 3:
                raise ValueError(f"views must be [B, V, 3, H, W], got {tuple(x.shape)}")
            v = x.shape[1]
            if v % len(modes):
                raise ValueError(f"{v} views cannot be split evenly over modes {modes}")
            counts = [v // len(modes)] * len(modes)
        if self.config.view_tiles:
            x, counts = self.tile_views(x, counts)
        mode_index = torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in enumerate(counts)])
        view_index = torch.cat([torch.arange(c) for c in counts])
        return x, mode_index, view_index

    def tile_views(self, x: torch.Tensor, counts: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        """Views [B, V, 3, H, W] (modes in blocks of ``counts``; uint8 or floats in [0, 1]) -> the
        :func:`view_tiles` of each mode's block at the tower's input size and the new counts (identity when
        ``view_tiles`` is 0). The feature cache applies it too, so cached and live views are the same."""
        n = self.config.view_tiles
        if not n:
            return x, list(counts)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        parts, start = [], 0
        for c in counts:
            parts.append(view_tiles(x[:, start:start + c], n, self.image_size, keep_whole=not self.config.tiles_only))
            start += c
        return torch.cat(parts, dim=1), [p.shape[1] for p in parts]

    def encode_views(self, views: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-view image features [B, V, D] (not normalised), mode_index [V], view_index [V]."""
        if isinstance(views, torch.Tensor) and views.dim() == 3 and views.is_floating_point():
            b, v = views.shape[:2]  # cached frozen-trunk features [B, V, F], modes split evenly
            if v % len(self.modes):
                raise ValueError(f"{v} cached views cannot be split evenly over modes {self.modes}")
            c = v // len(self.modes)
            mode_index = torch.arange(len(self.modes)).repeat_interleave(c)
            view_index = torch.arange(c).repeat(len(self.modes))
            feats = image_head_after_trunk(self.backbone, views.flatten(0, 1).to(self.pixel_mean.device))
            return feats.view(b, v, -1), mode_index, view_index
        x, mode_index, view_index = self._stack_views(views)
        b, v = x.shape[:2]
        feats = self.backbone.encode_image(self.preprocess(x.flatten(0, 1)))
        return feats.view(b, v, -1), mode_index, view_index

    # ----------------------------------------------------------------------------------------------- #
    def forward(
        self,
        views: torch.Tensor | Mapping[str, torch.Tensor],
        prompts: Sequence[str] | torch.Tensor | None = None,
        *,
        text_features: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_details: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Reward per sample [B]. With ``return_details``: a dict with ``reward`` [B], ``alignment`` [B],
        ``quality`` [B], ``view_alignment`` [B, V] (scaled cosine of each view alone with the prompt),
        ``view_weights`` [B, V] (fusion weights, mean over heads) and ``view_mask`` [B, V].

        ``view_mask`` [B, V] marks present views (default: all). In training mode view dropout (if
        configured) drops further views, drawn from ``generator`` when one is given.
        """
        feats, mode_index, view_index = self.encode_views(views)
        b, v, _ = feats.shape
        mask = torch.ones(b, v, dtype=torch.bool, device=feats.device) if view_mask is None else view_mask.to(
            feats.device, torch.bool)
        if self.training:
            mask = self.fusion.dropout_mask(mask, generator)
        pooled, weights = self.fusion(feats, mode_index, view_index, mask)
        zero = pooled.new_zeros(b)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        txt = None
        if self.config.use_alignment:
            if text_features is None:
                if prompts is None:
                    raise ValueError("pass prompts or text_features")
                text_features = self.encode_text(prompts)
            txt = F.normalize(text_features.to(pooled), dim=-1)
            if txt.shape[0] != b:
                raise ValueError(f"{txt.shape[0]} prompts for {b} samples")
            alignment = scale * (F.normalize(pooled, dim=-1) * txt).sum(-1)
        else:
            alignment = zero
        quality = self.quality(pooled).squeeze(-1) if self.quality is not None else zero
        reward = alignment + quality
        if not return_details:
            return reward
        if txt is not None:
            view_alignment = scale * torch.einsum("bvd,bd->bv", F.normalize(feats, dim=-1), txt)
        else:
            view_alignment = feats.new_zeros(b, v)
        return {"reward": reward, "alignment": alignment, "quality": quality, "view_alignment": view_alignment,
                "view_weights": weights.mean(dim=1), "view_mask": mask}

    # ----------------------------------------------------------------------------------------------- #
    def to_config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (weights aside): JSON-serialisable."""
        return {
            "kind": "rewardkit.StageRewardModel",
            "rewardkit_version": __version__,
            "stage": self.stage,
            "modes": self.modes,
            "model": self.config.to_dict(),
            "preprocess": dict(self.preprocess_cfg),
            "embed_dim": self.embed_dim,
        }

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any], *, load_backbone_weights: bool = False) -> StageRewardModel:
        """Rebuild from ``to_config_dict()``. Backbone weights are not loaded (nothing is downloaded) unless
        ``load_backbone_weights``: the trained weights come from ``load_weights`` / ``from_pretrained``."""
        cfg = dict(d.get("model", d))
        backbone = dict(cfg.get("backbone") or {})
        if not load_backbone_weights:
            backbone["pretrained"] = None
        cfg["backbone"] = backbone
        model = cls(StageModelConfig.from_dict(cfg))
        pp = d.get("preprocess")
        if isinstance(pp, Mapping) and "mean" in pp and "std" in pp:  # the recorded input normalisation wins
            model.preprocess_cfg = {**model.preprocess_cfg, **pp}
            model.pixel_mean.copy_(torch.tensor(pp["mean"]).view(1, 3, 1, 1))
            model.pixel_std.copy_(torch.tensor(pp["std"]).view(1, 3, 1, 1))
        return model

    def save_weights(self, path: str | Path) -> Path:
        from safetensors.torch import save_model

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(self, str(path), metadata={"format": "pt", "rewardkit_version": __version__})
        return path

    def load_weights(self, path: str | Path, strict: bool = True) -> None:
        from safetensors.torch import load_model

        missing, unexpected = load_model(self, str(path), strict=strict)
        if strict and (missing or unexpected):  # pragma: no cover - load_model raises in strict mode
            raise RuntimeError(f"{path}: missing {missing}, unexpected {unexpected}")

    def save_pretrained(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` (``to_config_dict()`` plus ``extra``) and ``model.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.to_config_dict()
        if extra:
            cfg.update(extra)
        (directory / CHECKPOINT_CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        self.save_weights(directory / CHECKPOINT_WEIGHTS_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> StageRewardModel:
        directory = Path(directory)
        cfg_path, w_path = directory / CHECKPOINT_CONFIG_FILE, directory / CHECKPOINT_WEIGHTS_FILE
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{directory}: missing {p.name}")
        model = cls.from_config_dict(json.loads(cfg_path.read_text()))
        model.load_weights(w_path)
        return model.to(device).eval()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


__all__ = [
    "CHECKPOINT_CONFIG_FILE", "DEFAULT_MODES", "RENDER_MODES", "STAGES", "StageModelConfig", "StageRewardModel", "CHECKPOINT_WEIGHTS_FILE",
    "object_box", "trainable_parameters", "view_tiles",
]
