"""The evaluation protocol of :mod:`rewardkit.eval.generation` as one config, written into every result.

AR3D-R1 (Table 4) pins the metrics (CLIP score, KD ×100 and FD on Inception-V3, KD ×100 on DINOv2) but not
how the views are made. :class:`EvalGenConfig` makes each choice a parameter (``rewardkit.config``: strict,
typed, dotted ``--set``), and :data:`PROVENANCE` says for each where its default comes from: the paper, the
released evaluation code (``eval.py`` of 3DGen-R1 at 5e81dfd, ../shared/reference/ar3d-r1-hi-grpo.md §4.2),
or "not pinned by the paper". :func:`protocol_record` is what a result file carries beside the figures.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewardkit import config as _config


@dataclass
class InceptionConfig:
    """Inception-V3 pool features (2048-d) for KD_incep and FD_incep."""

    weights: str | None = None
    """A local file: torchvision's ``inception_v3_google-0cc3c7bd.pth`` or pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``. None: no Inception metrics."""
    format: Literal["auto", "torchvision", "pytorch-fid"] = "auto"
    input_size: int = 299


@dataclass
class DinoConfig:
    """DINOv2 CLS features for KD_dinov2 (and FD_dinov2, reported as an extra)."""

    weights: str | None = None
    """A local folder: Hugging Face ``facebook/dinov2-base`` or timm ``vit_base_patch14_dinov2.lvd142m``.
    None: no DINOv2 metrics."""
    input_size: int = 224


@dataclass
class ClipConfig:
    """The CLIP model of the CLIP score (open_clip architecture + local checkpoint)."""

    arch: str = "ViT-B-32"
    weights: str | None = None
    """A local open_clip checkpoint (file or folder). None: no CLIP score."""
    prompt: Literal["first_sentence", "full"] = "first_sentence"
    """``first_sentence``: the prompt cut at its first full stop (the released eval.py); ``full``: as given."""


@dataclass
class KDConfig:
    subsets: int = 100
    subset_size: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.subsets < 1 or self.subset_size < 2:
            raise ValueError(f"kd: need subsets >= 1 and subset_size >= 2, got {self.subsets}, {self.subset_size}")


@dataclass
class EvalGenConfig:
    """How generations and references are rendered and featurized (see :data:`PROVENANCE`)."""

    views: str = "toys4k24"
    """A camera preset of rewardkit.render.protocol or ``"az:el,az:el,..."``."""
    size: int = 512
    shading: Literal["textured", "untextured"] = "textured"
    """``textured``: rewardkit's ``rgb`` mode (textures, base and vertex colours, lit); ``untextured``: its
    ``geometry`` mode (one uniform colour, :attr:`untextured_color`, lit the same way)."""
    background: tuple[int, int, int] = (255, 255, 255)
    """Background of rendered views; RGBA reference images are composited over it."""
    untextured_color: tuple[int, int, int] = (255, 255, 255)
    up: str = "+y"
    """Up axis of the generated meshes (and of reference meshes)."""
    inception: InceptionConfig = field(default_factory=InceptionConfig)
    dinov2: DinoConfig = field(default_factory=DinoConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    batch_size: int = 32
    """Views per forward pass of an extractor."""
    device: str = "auto"
    workers: int = 1
    """Render processes (one GL context each)."""

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size: at least 16 px, got {self.size}")
        if self.batch_size < 1 or self.workers < 1:
            raise ValueError("batch_size and workers must be >= 1")
        for name in ("background", "untextured_color"):
            if not all(0 <= c <= 255 for c in getattr(self, name)):
                raise ValueError(f"{name}: RGB values 0-255, got {getattr(self, name)}")
        from rewardkit.render.protocol import get_protocol

        get_protocol(self.views)  # an unknown preset or a malformed list fails here, naming itself

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str = "") -> EvalGenConfig:
        return _config.from_dict(cls, dict(d), key=key)

    def to_dict(self) -> dict[str, Any]:
        return _config.to_dict(self)


PAPER = "AR3D-R1 (arXiv:2512.10949) Table 4"
PROVENANCE: dict[str, str] = {
    "metrics": f"{PAPER}: CLIP score, KD_incep x100, KD_dinov2 x100, FD_incep; KD is Binkowski et al.'s KID "
               "(ShapeLLM-Omni: 'following TRELLIS ... Kernel Distance [Binkowski et al. 2018] using Inception-V3')",
    "sets": "[derived] all generated renders vs all reference renders of the evaluated objects (the paper names "
            "no reference set; Toys4K's ground-truth renders of the same objects are the natural one)",
    "views": "not pinned by the paper; toys4k24 = the 24 Toys4K ground-truth views of the released eval.py "
             "(spiral, radius 2, FoV 40 deg), at which it also renders the generations",
    "size": "not pinned by the paper; the released ground-truth renders are 512 px, eval.py renders generations "
            "at 299 px; the extractors resize to their own input size either way",
    "shading": "not pinned by the paper; it marks 3DTopia-XL as evaluated on shaded images, implying the others "
               "were textured; the released eval.py renders generations untextured (white material)",
    "background": "not pinned by the paper; eval.py renders on white",
    "untextured_color": "not pinned by the paper; eval.py's material is white",
    "inception": "Inception-V3 pool3 (2048-d): ShapeLLM-Omni / TRELLIS; weights not named by the paper "
                 "(pytorch-fid's FID Inception is the common choice)",
    "dinov2": "not pinned by the paper; eval.py loads facebook/dinov2-base (CLS token, 224 px)",
    "clip": "not pinned by the paper; eval.py uses OpenAI CLIP ViT-B/32 (open_clip ViT-B-32, pretrained 'openai')",
    "clip.prompt": "not pinned by the paper; eval.py cuts the prompt at its first '.'",
    "clip_score": "100 x mean cosine over views, then over objects ([derived]: eval.py's mean cosine is not x100, "
                  "the paper's 20-30 values are)",
    "kd": "not pinned by the paper; 100 subsets of 1000 rows without replacement (the original KID code, "
          "torch-fidelity, torchmetrics and clean-fid)",
}

MME3DR_CATEGORIES: dict[str, str] = {
    "spatial_structural_geometry": "Spatial & Structural Geometry",
    "mechanical_affordances": "Mechanical Affordances",
    "biological_organic_shapes": "Biological & Organic Shapes",
    "world_knowledge_rare_objects": "World-Knowledge Rare Objects",
    "stylized_representation": "Stylized Representation",
}
"""MME-3DR's five categories (AR3D-R1 §6): slug -> the paper's name."""


def category_slug(name: str) -> str:
    """``"Spatial & Structural Geometry"`` -> ``spatial_structural_geometry`` (any spelling of the five
    names maps to its slug; other names are slugged the same way)."""
    return "_".join(w for w in re.split(r"[^a-z0-9]+", str(name).strip().lower().replace("&", " ")) if w)


def process_prompt(prompt: str, how: str) -> str:
    """The text the CLIP score compares with: ``first_sentence`` cuts at the first '.' (eval.py's
    ``prompt.split('.')[0]``), falling back to the whole prompt when that leaves nothing."""
    if how == "full":
        return prompt.strip()
    head = prompt.split(".")[0].strip()
    return head or prompt.strip()


def protocol_record(cfg: EvalGenConfig) -> dict[str, Any]:
    """The protocol as a result file records it: every setting, the resolved cameras and the provenance."""
    from rewardkit.render.protocol import get_protocol

    cams = get_protocol(cfg.views, size=cfg.size)
    d = cfg.to_dict()
    for k in ("device", "workers", "batch_size"):  # how, not what: they do not change the figures
        d.pop(k)
    d["cameras"] = cams.to_dict()
    d["render_mode"] = "rgb" if cfg.shading == "textured" else "geometry"
    d["provenance"] = dict(PROVENANCE)
    return d


def load_eval_config(path: str | Path | None = None, overrides: Sequence[str] = (), **fixed: Any) -> EvalGenConfig:
    """Config file (optional; an ``eval_gen:`` section is used if present) < ``overrides`` < ``fixed``."""
    d = _config.load_file(path) if path else {}
    if "eval_gen" in d and isinstance(d["eval_gen"], dict):
        d = d["eval_gen"]
    _config.apply_overrides(d, overrides, EvalGenConfig)
    for k, v in fixed.items():
        if v is not None:
            _config.apply_overrides(d, {k: v}, EvalGenConfig)
    return EvalGenConfig.from_dict(d)


__all__ = [
    "MME3DR_CATEGORIES",
    "PROVENANCE",
    "ClipConfig",
    "DinoConfig",
    "EvalGenConfig",
    "InceptionConfig",
    "KDConfig",
    "category_slug",
    "load_eval_config",
    "process_prompt",
    "protocol_record",
]
