"""The on-disk scorer format: file names, format and version checks, reading config.json and weights.

::

    <scorer dir>/config.json        format + version, kind, name, stage, architecture (the model's own
                                    config dict: backbone, modes, fusion, heads, preprocessing), camera
                                    protocol, render modes and render config, rewardkit / torch / open_clip
                                    versions, training-data summary and metrics
    <scorer dir>/model.safetensors  the weights (safetensors: tensors only, nothing executes on load)
    <scorer dir>/README.md          the model card, written from config.json (:mod:`rewardkit.scoring.card`)

    <scorer-set dir>/config.json    {"format": "rewardkit.scorer_set", "scorers": {"global": "global", ...}}
    <scorer-set dir>/global/        a scorer directory (the Hi-GRPO global-stage reward)
    <scorer-set dir>/local/         a scorer directory (the Hi-GRPO local-stage reward)
    <scorer-set dir>/README.md

Loading checks, and says which one failed: the directory and its files exist, the format name and
version, the rewardkit version that wrote it (a newer minor/major than the running one is refused), the
camera-protocol version, and that the weights match the architecture (missing or unexpected tensors are
listed). This module knows files and versions only; which class a ``kind`` loads into is
:mod:`rewardkit.scoring.base`'s registry.

(The training checkpoint of a stage model, ``StageRewardModel.save_pretrained``, is a different on-disk
format with its own file names: :data:`rewardkit.models.stage.CHECKPOINT_CONFIG_FILE` and
:data:`~rewardkit.models.stage.CHECKPOINT_WEIGHTS_FILE`.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rewardkit import __version__
from rewardkit.scoring.errors import ScorerError, ScorerVersionError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
SCORER_FORMAT = "rewardkit.scorer"
SCORER_SET_FORMAT = "rewardkit.scorer_set"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------------ #
# versions
# ------------------------------------------------------------------------------------------------------ #
def _parse_version(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out) or (0,)


def check_versions(config: Mapping[str, Any], where: str | Path, *, expected_format: str) -> list[str]:
    """Raise :class:`ScorerVersionError` for what cannot be loaded; return warnings for what merely differs."""
    warnings: list[str] = []
    fmt = config.get("format")
    if fmt != expected_format:
        raise ScorerError(f"{where}: config.json has format {fmt!r}, expected {expected_format!r} "
                          "(is this a rewardkit scorer directory?)")
    fv = config.get("format_version")
    if not isinstance(fv, int):
        raise ScorerError(f"{where}: config.json has no integer format_version")
    if fv > FORMAT_VERSION:
        raise ScorerVersionError(
            f"{where}: scorer format version {fv} is newer than this rewardkit ({__version__}) reads "
            f"(format version {FORMAT_VERSION}); upgrade rewardkit to load it")
    saved = config.get("rewardkit_version")
    if saved is None:
        raise ScorerError(f"{where}: config.json does not record the rewardkit_version that wrote it")
    s, c = _parse_version(saved), _parse_version(__version__)
    if s[:2] > c[:2]:
        raise ScorerVersionError(
            f"{where}: written by rewardkit {saved}, but this is rewardkit {__version__}; "
            f"upgrade rewardkit to >= {'.'.join(map(str, s[:2]))} to load it")
    if s[:1] != c[:1]:
        raise ScorerVersionError(
            f"{where}: written by rewardkit {saved} (major version {s[0]}), this is rewardkit {__version__} "
            f"(major version {c[0]}); re-export the scorer with this version")
    if s != c:
        warnings.append(f"written by rewardkit {saved}, loaded by {__version__}")
    proto = config.get("camera_protocol")
    if isinstance(proto, Mapping) and "version" in proto:
        from rewardkit.render.protocol import PROTOCOL_VERSION  # render is imported only when needed

        if int(proto["version"]) != PROTOCOL_VERSION:
            raise ScorerVersionError(
                f"{where}: trained on camera protocol {proto.get('name')!r} version {proto['version']}, this "
                f"rewardkit renders protocol version {PROTOCOL_VERSION}; the views would not match")
    for lib, current in (("torch", torch.__version__), ("open_clip", _open_clip_version())):
        saved_lib = (config.get("library_versions") or {}).get(lib)
        if saved_lib and current and _parse_version(saved_lib)[:2] != _parse_version(current)[:2]:
            warnings.append(f"saved with {lib} {saved_lib}, running {lib} {current}")
    return warnings


def _open_clip_version() -> str | None:
    try:
        import open_clip

        return getattr(open_clip, "__version__", None)
    except Exception:  # pragma: no cover
        return None


def library_versions() -> dict[str, str | None]:
    return {"rewardkit": __version__, "torch": torch.__version__, "open_clip": _open_clip_version()}


# ------------------------------------------------------------------------------------------------------ #
# reading and writing
# ------------------------------------------------------------------------------------------------------ #
def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.exists():
        raise ScorerError(f"{directory}: scorer directory not found")
    if not directory.is_dir():
        raise ScorerError(f"{directory}: not a directory (a scorer is a directory with config.json and "
                          f"model.safetensors)")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ScorerError(f"{directory}: no config.json here; not a rewardkit scorer directory")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScorerError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ScorerError(f"{path}: expected a JSON object")
    return cfg


def load_weights(module: torch.nn.Module, weights: Path, where: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ScorerError(f"{weights}: cannot read safetensors weights: {exc}") from exc
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} vs model "
                         f"{tuple(own[k].shape)})")
        raise ScorerError(f"{where}: model.safetensors does not match the architecture in config.json: "
                          + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def contiguous_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for k, v in module.state_dict().items():
        t = v.detach().cpu()
        # safetensors refuses tensors that share storage; clone duplicates
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen and ptr != -1:
            t = t.clone()
        else:
            seen[ptr] = k
        out[k] = t.contiguous()
    return out


def protocol_from_dict(d: Mapping[str, Any]):
    """A :class:`rewardkit.render.CameraProtocol` from a recorded camera-protocol dict (a known preset's
    name and size are enough)."""
    from rewardkit.render.protocol import PRESETS, CameraProtocol

    d = dict(d)
    try:
        return CameraProtocol.from_dict(d)
    except Exception as exc:
        name = d.get("name")
        if name in PRESETS:
            return PRESETS[name].with_size(d.get("size"))
        raise ScorerError(f"invalid camera_protocol in config: {exc}") from exc


def camera_protocol(camera: Any, size: int | None = None):
    """The :class:`rewardkit.render.CameraProtocol` of a preset name, a protocol or a recorded dict
    (``config.json``'s ``camera_protocol``), resized to ``size`` when given."""
    from rewardkit.render.protocol import get_protocol

    return get_protocol(protocol_from_dict(camera) if isinstance(camera, Mapping) else camera, size=size)


def default_render_config() -> dict[str, Any]:
    from rewardkit.render.renderer import RenderConfig

    return RenderConfig().to_dict()


def render_config_object(d: Mapping[str, Any] | None):
    """A :class:`rewardkit.render.RenderConfig` from a recorded render-config dict, typed by
    :func:`rewardkit.config.from_dict`. Keys this version does not know are ignored (a scorer saved by a newer
    rewardkit that records more appearance settings still loads)."""
    from dataclasses import fields as dc_fields

    from rewardkit import config as _config
    from rewardkit.render.renderer import RenderConfig

    if not d:
        return RenderConfig()
    names = {f.name for f in dc_fields(RenderConfig)}
    return _config.from_dict(RenderConfig, {k: v for k, v in d.items() if k in names}, key="render_config")


def jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        try:
            return x.item()
        except Exception:
            return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)



__all__ = [
    "CARD_FILE", "CONFIG_FILE", "FORMAT_VERSION", "SCORER_FORMAT", "SCORER_SET_FORMAT", "WEIGHTS_FILE",
    "camera_protocol", "check_versions", "contiguous_state_dict", "default_render_config", "jsonable", "library_versions",
    "load_weights", "protocol_from_dict", "read_config", "render_config_object",
]
