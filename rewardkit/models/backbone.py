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

A new architecture is a new JSON config (open_clip's convention), not new code: ``register_model_config``
adds a file or a folder of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
from torch import nn

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


class BackboneError(RuntimeError):
    """The backbone cannot be built or its weights cannot be loaded."""


def _weights_kind(pretrained: str | None) -> str:
    if pretrained in _NO_WEIGHTS:
        return "none"
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
        cfg = BackboneConfig(**cfg)
    register_model_config()
    if open_clip.get_model_config(cfg.name) is None:
        raise BackboneError(f"unknown backbone architecture {cfg.name!r}; known: {', '.join(open_clip.list_models())}")
    kind = _weights_kind(cfg.pretrained)
    kwargs: dict[str, Any] = {"force_image_size": cfg.image_size} if cfg.image_size else {}
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
    if not hasattr(model, "visual") or not hasattr(model, "encode_text"):
        raise BackboneError(f"backbone {cfg.name!r} is not a CLIP-style model with an image and a text tower")
    return model


def get_tokenizer(cfg: BackboneConfig | dict[str, Any]):
    """open_clip's tokenizer for the architecture (cached: building the BPE tokenizer takes ~0.2 s)."""
    if isinstance(cfg, dict):
        cfg = BackboneConfig(**cfg)
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
        return list(trunk.blocks)
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
                    unlocked_image_blocks: int | None = None) -> None:
    """Freeze towers as HPS does (``--lock-text --lock-image --lock-*-unlocked-*``).

    ``unlocked_image_blocks=None`` trains the whole image tower; ``N`` trains only its last N blocks (plus
    the final norm and projection when N > 0); ``0`` freezes the image tower. ``lock_text`` freezes the text
    tower except its last ``unlocked_text_layers`` layers. The CLIP ``logit_scale`` is never used for
    training (the stage model has its own).
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
    for name in ("logit_scale", "logit_bias"):
        p = getattr(model, name, None)
        if isinstance(p, nn.Parameter):
            p.requires_grad_(False)


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


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "BackboneConfig", "BackboneError", "MODEL_CONFIG_DIR", "count_parameters", "create_backbone",
    "freeze_backbone", "get_tokenizer", "image_blocks", "image_preprocess_cfg", "list_backbones",
    "load_backbone_weights", "register_model_config",
]
