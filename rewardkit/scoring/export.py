"""Exported scorers: a directory anyone can load and score with, no training code and no pickles.

::

    <scorer dir>/config.json        format + version, kind, name, stage, architecture (the model's own
                                    config dict: backbone, modes, fusion, heads, preprocessing), camera
                                    protocol, render modes and render config, rewardkit / torch / open_clip
                                    versions, training-data summary and metrics
    <scorer dir>/model.safetensors  the weights (safetensors: tensors only, nothing executes on load)
    <scorer dir>/README.md          the model card, written from config.json

    <scorer-set dir>/config.json    {"format": "rewardkit.scorer_set", "scorers": {"global": "global", ...}}
    <scorer-set dir>/global/        a scorer directory (the Hi-GRPO step-1 reward)
    <scorer-set dir>/local/         a scorer directory (the Hi-GRPO step-2 reward)
    <scorer-set dir>/README.md

A :class:`Scorer` is a stage reward model plus the render settings it was trained on, so scoring a mesh
renders exactly the views the model learned from. ``load_scorer(dir)`` returns a :class:`Scorer` or a
:class:`ScorerSet` depending on what the directory holds; baselines (``clip-multiview``,
``hps-multiview``, see :mod:`rewardkit.scoring.baselines`) use the same format with their own ``kind``.

Loading checks, and says which one failed: the directory and its files exist, the format name and
version, the rewardkit version that wrote it (a newer minor/major than the running one is refused), the
camera-protocol version, and that the weights match the architecture (missing or unexpected tensors are
listed).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from rewardkit import __version__

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
SCORER_FORMAT = "rewardkit.scorer"
SCORER_SET_FORMAT = "rewardkit.scorer_set"
FORMAT_VERSION = 1
STAGE_MODEL_KIND = "stage-model"

Views = "torch.Tensor | Mapping[str, torch.Tensor]"


class ScorerError(RuntimeError):
    """A scorer directory is missing, incomplete, malformed, or its weights do not fit its config."""


class ScorerVersionError(ScorerError):
    """A scorer directory was written by a format or rewardkit version this installation cannot load."""


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
        from rewardkit.render.protocol import PROTOCOL_VERSION

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
# outputs
# ------------------------------------------------------------------------------------------------------ #
@dataclass
class ScoreOutput:
    """One scorer's result for a batch: ``scores`` [B] and, when asked for, ``per_view`` [B, V] (each view's
    own score on the scorer's scale, e.g. the scaled cosine of that view alone with the prompt)."""

    scores: torch.Tensor
    per_view: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def tolist(self) -> list[float]:
        return [float(x) for x in self.scores.detach().cpu().tolist()]


# ------------------------------------------------------------------------------------------------------ #
# the scorer interface
# ------------------------------------------------------------------------------------------------------ #
class BaseScorer:
    """What every scorer (stage model or baseline) offers.

    ``score_views(views, prompts)`` scores already-rendered views: a float tensor [B, V, 3, H, W] with RGB
    in [0, 1] (uint8 0..255 accepted), views of several modes concatenated in ``modes`` order, or a dict
    ``{mode: tensor}``. Runs under ``torch.no_grad()`` and ``eval()`` unless ``grad=True``, in which case
    the scores are differentiable with respect to the view pixels.
    """

    kind: str = "base"
    name: str
    stage: str | None
    modes: list[str]

    def __init__(self, *, name: str, stage: str | None, modes: Sequence[str], camera: Any = "orbit6",
                 render_config: Mapping[str, Any] | None = None, training_data: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Any] | None = None, description: str | None = None) -> None:
        from rewardkit.render.protocol import get_protocol

        self.name = name
        self.stage = stage
        self.modes = list(modes)
        self.camera = get_protocol(camera if not isinstance(camera, Mapping) else _protocol_from_dict(camera))
        self.render_config = dict(render_config) if render_config else _default_render_config()
        self.training_data = dict(training_data or {})
        self.metrics = dict(metrics or {})
        self.description = description
        self.load_warnings: list[str] = []
        self.source: str | None = None

    # -- to be provided by subclasses ------------------------------------------------------------- #
    @property
    def module(self) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(self, views: Any, prompts: Sequence[str], per_view: bool) -> ScoreOutput:  # pragma: no cover
        raise NotImplementedError

    def _architecture_config(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    # -- common ------------------------------------------------------------------------------------ #
    @property
    def device(self) -> torch.device:
        try:
            return next(self.module.parameters()).device
        except StopIteration:  # pragma: no cover
            return torch.device("cpu")

    def to(self, device: str | torch.device) -> "BaseScorer":
        self.module.to(device)
        return self

    @property
    def render_size(self) -> int:
        return int(self.camera.size)

    def score_views(self, views: Any, prompts: Sequence[str] | str, *, grad: bool = False,
                    per_view: bool = False) -> ScoreOutput:
        """Score rendered views. ``prompts``: one string per sample (a single string is broadcast)."""
        views = _check_views(views, self.modes)
        b = _batch_size(views)
        if isinstance(prompts, str):
            prompts = [prompts] * b
        prompts = list(prompts)
        if len(prompts) != b:
            raise ValueError(f"{len(prompts)} prompts for {b} samples")
        module = self.module
        was_training = module.training
        if was_training:
            module.eval()
        try:
            with torch.set_grad_enabled(grad):
                return self._forward(views, prompts, per_view)
        finally:
            if was_training:
                module.train(True)

    __call__ = score_views

    def score_meshes(self, meshes: Any, prompts: Sequence[str] | str, **kw: Any) -> list:
        """Render and score meshes (see :func:`rewardkit.scoring.api.score_meshes`)."""
        from rewardkit.scoring.api import score_meshes

        return score_meshes(meshes, prompts, self, **kw)

    def config_dict(self) -> dict[str, Any]:
        return {
            "format": SCORER_FORMAT,
            "format_version": FORMAT_VERSION,
            "rewardkit_version": __version__,
            "library_versions": library_versions(),
            "kind": self.kind,
            "name": self.name,
            "stage": self.stage,
            "description": self.description or _default_description(self.kind, self.stage),
            "architecture": self._architecture_config(),
            "camera_protocol": self.camera.to_dict(),
            "render_modes": list(self.modes),
            "render_config": dict(self.render_config),
            "training_data": self.training_data,
            "metrics": self.metrics,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and the ``README.md`` model card."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config_dict()
        state = _contiguous_state_dict(self.module)
        save_file(state, str(directory / WEIGHTS_FILE),
                  metadata={"format": "pt", "rewardkit_version": __version__, "kind": self.kind})
        (directory / CONFIG_FILE).write_text(json.dumps(_jsonable(cfg), indent=2, sort_keys=True) + "\n")
        (directory / CARD_FILE).write_text(model_card(cfg))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> "BaseScorer":
        scorer = load_scorer(directory, device=device)
        if not isinstance(scorer, cls):
            raise ScorerError(f"{directory}: holds a {type(scorer).__name__}, not a {cls.__name__}")
        return scorer

    def describe(self) -> dict[str, Any]:
        """A short JSON-able summary (for /health and --verbose)."""
        return {"name": self.name, "kind": self.kind, "stage": self.stage, "modes": list(self.modes),
                "camera": self.camera.name, "views": self.camera.n_views, "render_size": self.render_size,
                "source": self.source}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, stage={self.stage!r}, modes={self.modes}, "
                f"camera={self.camera.name}@{self.render_size}px)")


class Scorer(BaseScorer):
    """An exported per-stage reward model (:class:`rewardkit.models.StageRewardModel`) plus its render
    settings. ``Scorer(model, camera="orbit6", render_size=224, training_data=..., metrics=...)``."""

    kind = STAGE_MODEL_KIND

    def __init__(self, model: torch.nn.Module, *, camera: Any = "orbit6", render_size: int | None = None,
                 render_config: Mapping[str, Any] | None = None, name: str | None = None,
                 training_data: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                 description: str | None = None) -> None:
        from rewardkit.render.protocol import get_protocol

        proto = get_protocol(camera if not isinstance(camera, Mapping) else _protocol_from_dict(camera),
                             size=render_size)
        super().__init__(name=name or model.stage, stage=model.stage, modes=model.modes, camera=proto,
                         render_config=render_config, training_data=training_data, metrics=metrics,
                         description=description)
        self.model = model.eval()

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def _architecture_config(self) -> dict[str, Any]:
        return dict(self.model.to_config_dict(), architecture=type(self.model).__name__)

    def _forward(self, views: Any, prompts: Sequence[str], per_view: bool) -> ScoreOutput:
        text_features = None
        if self.model.config.use_alignment:
            # encode each distinct prompt once (RL batches hold G samples per prompt)
            unique = list(dict.fromkeys(prompts))
            feats = self.model.encode_text(unique)
            text_features = feats[torch.tensor([unique.index(p) for p in prompts], device=feats.device)]
        out = self.model(views, prompts, text_features=text_features, return_details=True)
        return ScoreOutput(
            scores=out["reward"], per_view=out["view_alignment"] if per_view else None,
            extras={"alignment": out["alignment"], "quality": out["quality"], "view_weights": out["view_weights"]},
        )

    @classmethod
    def _from_config(cls, cfg: Mapping[str, Any], weights: Path, where: Path) -> "Scorer":
        from rewardkit.models import StageRewardModel

        arch = dict(cfg.get("architecture") or {})
        arch_name = arch.pop("architecture", "StageRewardModel")
        if arch_name != "StageRewardModel":
            raise ScorerError(f"{where}: unknown architecture {arch_name!r} (this rewardkit knows StageRewardModel)")
        try:
            model = StageRewardModel.from_config_dict(arch)
        except Exception as exc:
            raise ScorerError(f"{where}: cannot build the model from config.json: {type(exc).__name__}: {exc}") from exc
        _load_weights(model, weights, where)
        return cls(model, camera=cfg["camera_protocol"], render_config=cfg.get("render_config"),
                   name=cfg.get("name"), training_data=cfg.get("training_data"), metrics=cfg.get("metrics"),
                   description=cfg.get("description"))


# ------------------------------------------------------------------------------------------------------ #
# scorer sets
# ------------------------------------------------------------------------------------------------------ #
class ScorerSet:
    """Named scorers used together, e.g. ``{"global": ..., "local": ...}`` for Hi-GRPO. Scoring through a set
    renders each mesh once for all of them (see :mod:`rewardkit.scoring.api`)."""

    def __init__(self, scorers: Mapping[str, BaseScorer] | Sequence[BaseScorer] | None = None, *,
                 global_scorer: BaseScorer | None = None, local_scorer: BaseScorer | None = None) -> None:
        items: dict[str, BaseScorer] = {}
        if isinstance(scorers, Mapping):
            items.update(scorers)
        elif scorers is not None:
            for s in scorers:
                key = s.name
                i = 2
                while key in items:
                    key, i = f"{s.name}-{i}", i + 1
                items[key] = s
        if global_scorer is not None:
            items["global"] = global_scorer
        if local_scorer is not None:
            items["local"] = local_scorer
        if not items:
            raise ValueError("a ScorerSet needs at least one scorer")
        for key, s in items.items():
            if not isinstance(s, BaseScorer):
                raise TypeError(f"{key!r} is a {type(s).__name__}, not a scorer")
        self.scorers = items
        self.source: str | None = None

    def __getitem__(self, key: str) -> BaseScorer:
        return self.scorers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scorers)

    def __len__(self) -> int:
        return len(self.scorers)

    def items(self):
        return self.scorers.items()

    def names(self) -> list[str]:
        return list(self.scorers)

    @property
    def global_scorer(self) -> BaseScorer | None:
        return self.scorers.get("global")

    @property
    def local_scorer(self) -> BaseScorer | None:
        return self.scorers.get("local")

    def to(self, device: str | torch.device) -> "ScorerSet":
        for s in self.scorers.values():
            s.to(device)
        return self

    def score_views(self, views: Mapping[str, torch.Tensor], prompts: Sequence[str] | str, *, grad: bool = False,
                    per_view: bool = False) -> dict[str, ScoreOutput]:
        """Score a dict of views ``{mode: [B, V, 3, H, W]}`` with every scorer (each takes its own modes)."""
        return {k: s.score_views({m: views[m] for m in s.modes} if isinstance(views, Mapping) else views,
                                 prompts, grad=grad, per_view=per_view) for k, s in self.scorers.items()}

    def score_meshes(self, meshes: Any, prompts: Sequence[str] | str, **kw: Any) -> list:
        """Render each mesh once and score it with every scorer (see :func:`rewardkit.scoring.api.score_meshes`)."""
        from rewardkit.scoring.api import score_meshes

        return score_meshes(meshes, prompts, self, **kw)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for key, s in self.scorers.items():
            s.save_pretrained(directory / key)
        cfg = {"format": SCORER_SET_FORMAT, "format_version": FORMAT_VERSION, "rewardkit_version": __version__,
               "scorers": {k: k for k in self.scorers}}
        (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (directory / CARD_FILE).write_text(_set_card(self))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> "ScorerSet":
        loaded = load_scorer(directory, device=device)
        if isinstance(loaded, BaseScorer):
            return cls([loaded])
        return loaded

    def describe(self) -> dict[str, Any]:
        return {k: s.describe() for k, s in self.scorers.items()}

    def __repr__(self) -> str:
        return f"ScorerSet({', '.join(f'{k}={v!r}' for k, v in self.scorers.items())})"


# ------------------------------------------------------------------------------------------------------ #
# loading
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


def load_scorer(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> "BaseScorer | ScorerSet":
    """Load a scorer or scorer-set directory (no pickles: JSON config + safetensors weights)."""
    directory = Path(directory)
    cfg = read_config(directory)
    if cfg.get("format") == SCORER_SET_FORMAT:
        check_versions(cfg, directory, expected_format=SCORER_SET_FORMAT)
        entries = cfg.get("scorers")
        if not isinstance(entries, Mapping) or not entries:
            raise ScorerError(f"{directory}: scorer set config.json lists no scorers")
        scorers = {}
        for key, sub in entries.items():
            sub_dir = (directory / str(sub)).resolve()
            if directory.resolve() not in sub_dir.parents:
                raise ScorerError(f"{directory}: scorer {key!r} points outside the set directory ({sub})")
            s = load_scorer(sub_dir, device=device)
            if not isinstance(s, BaseScorer):
                raise ScorerError(f"{sub_dir}: nested scorer sets are not supported")
            scorers[str(key)] = s
        out = ScorerSet(scorers)
        out.source = str(directory)
        return out
    warnings = check_versions(cfg, directory, expected_format=SCORER_FORMAT)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ScorerError(f"{directory}: model.safetensors is missing")
    kind = cfg.get("kind")
    if kind == STAGE_MODEL_KIND:
        scorer: BaseScorer = Scorer._from_config(cfg, weights, directory)
    else:
        from rewardkit.scoring.baselines import BASELINES

        if kind not in BASELINES:
            raise ScorerError(f"{directory}: unknown scorer kind {kind!r}; this rewardkit knows "
                              f"{', '.join([STAGE_MODEL_KIND, *BASELINES])}")
        scorer = BASELINES[kind]._from_config(cfg, weights, directory)
    for w in warnings:
        log.warning("%s: %s", directory, w)
    scorer.load_warnings = warnings
    scorer.source = str(directory)
    return scorer.to(device)


def _load_weights(module: torch.nn.Module, weights: Path, where: Path) -> None:
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


def _contiguous_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
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


# ------------------------------------------------------------------------------------------------------ #
# helpers
# ------------------------------------------------------------------------------------------------------ #
def _protocol_from_dict(d: Mapping[str, Any]):
    from rewardkit.render.protocol import CameraProtocol, PRESETS

    d = dict(d)
    try:
        return CameraProtocol.from_dict(d)
    except Exception as exc:
        name = d.get("name")
        if name in PRESETS:
            return PRESETS[name].with_size(d.get("size"))
        raise ScorerError(f"invalid camera_protocol in config: {exc}") from exc


def _default_render_config() -> dict[str, Any]:
    from rewardkit.render.renderer import RenderConfig

    return RenderConfig().to_dict()


def render_config_object(d: Mapping[str, Any] | None):
    """A :class:`rewardkit.render.RenderConfig` from a recorded render-config dict (unknown keys ignored)."""
    from dataclasses import fields as dc_fields

    from rewardkit.render.renderer import RenderConfig

    if not d:
        return RenderConfig()
    names = {f.name for f in dc_fields(RenderConfig)}
    kwargs = {}
    for k, v in d.items():
        if k in names:
            kwargs[k] = tuple(v) if isinstance(v, list) else v
    return RenderConfig(**kwargs)


def _check_views(views: Any, modes: Sequence[str]) -> Any:
    if isinstance(views, Mapping):
        missing = [m for m in modes if m not in views]
        if missing:
            raise ValueError(f"this scorer needs render modes {list(modes)}; missing {missing}")
        out = {}
        for m in modes:
            v = torch.as_tensor(views[m]) if not isinstance(views[m], torch.Tensor) else views[m]
            if v.dim() == 4:
                v = v.unsqueeze(0)
            if v.dim() != 5 or v.shape[2] != 3:
                raise ValueError(f"views[{m!r}] must be [B, V, 3, H, W], got {tuple(v.shape)}")
            out[m] = v
        if len({v.shape[0] for v in out.values()}) > 1:
            raise ValueError("all modes must have the same batch size")
        return out
    v = views if isinstance(views, torch.Tensor) else torch.as_tensor(views)
    if v.dim() == 4:
        v = v.unsqueeze(0)
    if v.dim() != 5 or v.shape[2] != 3:
        raise ValueError(f"views must be [B, V, 3, H, W] (or [V, 3, H, W] for one sample), got {tuple(v.shape)}")
    return v


def _batch_size(views: Any) -> int:
    if isinstance(views, Mapping):
        return int(next(iter(views.values())).shape[0])
    return int(views.shape[0])


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
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


_STAGE_TEXT = {
    "global": ("overall shape, parts, proportions, category and plausibility against the prompt",
               "untextured renders, so a texture change cannot move this score (Hi-GRPO step 1, a term of R_high)"),
    "local": ("texture, colour, material and local detail against the prompt",
              "textured, lit renders (Hi-GRPO step 2, R_low)"),
}


def _default_description(kind: str, stage: str | None) -> str:
    if kind == STAGE_MODEL_KIND and stage in _STAGE_TEXT:
        judges, sees = _STAGE_TEXT[stage]
        return f"rewardkit {stage}-stage reward model: judges {judges}; sees {sees}."
    if kind == "clip-multiview":
        return "Baseline: 100 x cosine(prompt, view) of a CLIP model, averaged over the views (the CLIP score of text-to-3D papers)."
    if kind == "hps-multiview":
        return "Baseline: HPS v2.1 (open_clip ViT-H-14) cosine(prompt, view), max over the views (AR3D-R1's R_HPM)."
    return f"rewardkit scorer ({kind})"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True)[:200] + "`"
    return str(v)


def _flatten(d: Mapping[str, Any], depth: int, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys (up to ``depth`` levels), so the card shows one row per number."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and depth > 0 and v:
            out.update(_flatten(v, depth - 1, key + "."))
        else:
            out[key] = v
    return out


def model_card(cfg: Mapping[str, Any]) -> str:
    """The README.md model card, written from config.json."""
    arch = cfg.get("architecture") or {}
    model = arch.get("model") or {}
    backbone = model.get("backbone") or arch.get("backbone") or {}
    proto = cfg.get("camera_protocol") or {}
    pre = arch.get("preprocess") or arch.get("preprocessing") or {}
    lines = [
        f"# {cfg.get('name')} ({cfg.get('kind')})",
        "",
        str(cfg.get("description") or ""),
        "",
        "## Inputs",
        "",
        f"- stage: `{cfg.get('stage')}`",
        f"- render modes: {', '.join(f'`{m}`' for m in cfg.get('render_modes') or [])}",
        f"- camera protocol: `{proto.get('name')}` v{proto.get('version')}: azimuths {proto.get('azimuths')}, "
        f"elevations {proto.get('elevations')}, radius {proto.get('radius')}, vertical FoV {proto.get('yfov_deg')} deg, "
        f"{proto.get('size')} x {proto.get('size')} px; mesh normalized into [-0.5, 0.5]^3, +Y up",
        f"- backbone: `{backbone.get('name')}` (initial weights: `{backbone.get('pretrained')}`)",
        f"- preprocessing: {_fmt(pre) if pre else 'see config.json'}",
        "",
        "## Usage",
        "",
        "```bash",
        'rewardkit score mesh.glb --prompt "a red chair" --scorer THIS_DIR',
        "rewardkit serve --scorer THIS_DIR --port 8000",
        "```",
        "",
        "```python",
        "from rewardkit.scoring import load_scorer, score_meshes",
        "scorer = load_scorer('THIS_DIR')",
        "results = score_meshes(['mesh.glb'], ['a red chair'], scorer)",
        "```",
        "",
        "Scores are comparable between candidates of the same prompt (use group-normalized advantages in RL);",
        "they have no fixed range.",
        "",
        "## Training data",
        "",
    ]
    td = cfg.get("training_data") or {}
    lines += [f"- {k}: {_fmt(v)}" for k, v in _flatten(td, depth=1).items()] or ["- not recorded"]
    lines += ["", "## Metrics", ""]
    metrics = _flatten(cfg.get("metrics") or {}, depth=3)
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        lines.append("- not recorded")
    lv = cfg.get("library_versions") or {}
    lines += ["", "## Versions", "",
              f"- written by rewardkit {cfg.get('rewardkit_version')} (scorer format {cfg.get('format_version')})",
              f"- torch {lv.get('torch')}, open_clip {lv.get('open_clip')}",
              "", "Files: `config.json` (everything above, machine-readable), `model.safetensors` (weights; no pickles).",
              ""]
    return "\n".join(lines)


def _set_card(s: ScorerSet) -> str:
    lines = ["# rewardkit scorer set", "",
             "Scorers used together; scoring a mesh renders it once for all of them.", "",
             "| key | kind | stage | render modes | camera |", "|---|---|---|---|---|"]
    for k, sc in s.items():
        lines.append(f"| `{k}` | {sc.kind} | {sc.stage} | {', '.join(sc.modes)} | {sc.camera.name} @ {sc.render_size}px |")
    lines += ["", "Each sub-directory is a scorer with its own `config.json`, `model.safetensors` and `README.md`.",
              "", "```bash", 'rewardkit score mesh.glb --prompt "a red chair" --scorer THIS_DIR', "```", ""]
    return "\n".join(lines)


__all__ = [
    "BaseScorer", "CARD_FILE", "CONFIG_FILE", "FORMAT_VERSION", "SCORER_FORMAT", "SCORER_SET_FORMAT", "ScoreOutput",
    "Scorer", "ScorerError", "ScorerSet", "ScorerVersionError", "WEIGHTS_FILE", "check_versions", "load_scorer",
    "model_card", "read_config", "render_config_object",
]
