"""Feature extractors for generator evaluation, each loaded from local weights (nothing is downloaded).

- **Inception-V3 pool features** (2048-d, the input of the final classifier), from either
  ``format="torchvision"``: a state dict of ``torchvision.models.inception_v3`` (1000 classes, with or
  without the auxiliary head), or ``format="pytorch-fid"``: pytorch-fid's FID-Inception
  ``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID network: 1008 classes, average pools that
  ignore padding, a max pool in the last block). ``auto`` tells them apart by the classifier size.
  Input: resized to ``input_size`` (299, the architecture's training size), scaled to [-1, 1].
- **DINOv2 CLS features**, from a Hugging Face folder (``config.json`` with ``model_type: dinov2`` +
  weights, e.g. ``facebook/dinov2-base``: ``pooler_output``, the layer-normed CLS token) or a timm folder
  (``config.json`` with ``architecture``, e.g. ``timm/vit_base_patch14_dinov2.lvd142m``: the pooled CLS
  token of ``num_classes=0``). Input: resized to ``input_size`` (224), ImageNet mean/std.
- **CLIP** image and text embeddings from an open_clip architecture + a local checkpoint
  (:func:`rewardkit.models.backbone.create_backbone`). Input: the tower's size and normalization.

Images are uint8 arrays [B, H, W, 3]; resizing is bilinear with antialiasing (torch). Every extractor has a
``fingerprint`` (kind, weight file digests, preprocessing) that keys its folder of the feature cache
(:mod:`rewardkit.render.features`) and is written into the results, and ``describe()`` for the record.
:func:`featurize` runs them over the view files of renders, through the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rewardkit.errors import RewardkitError

INCEPTION_FORMATS = ("auto", "torchvision", "pytorch-fid")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureError(RewardkitError, ValueError):
    """Weights that cannot be found or loaded as the named extractor (names the file and the problem)."""


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _weights_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt", ".json"))


RANDOM_INIT_SUFFIX = ".random-init.json"
"""``<weights file>.random-init.json`` (or ``random-init.json`` inside a weights folder) marks weights as
random-init: every extractor loaded from them says so in ``describe()`` (``random_init``, ``label``), and so
does every result computed with them. :func:`rewardkit.eval.generation.random_init.write_random_init_extractors`
writes such files for the demo and the tests."""


def random_init_label(path: str | Path) -> str | None:
    """The label of random-init weights at ``path`` (its marker's ``label``), or None for real weights."""
    path = Path(path)
    marker = path / "random-init.json" if path.is_dir() else path.with_name(path.name + RANDOM_INIT_SUFFIX)
    if not marker.is_file():
        return None
    try:
        return str(json.loads(marker.read_text()).get("label") or "random-init weights")
    except (OSError, ValueError):
        return "random-init weights (unreadable marker)"


def _label(details: dict, path: str | Path | None) -> dict:
    note = random_init_label(path) if path else "random-init weights (no file)"
    return {**details, "random_init": note is not None, "label": note}


def _fingerprint(kind: str, files: Sequence[Path], extra: dict) -> str:
    doc = {"kind": kind, "files": [file_digest(f) for f in files], **extra}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only``: no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatureError(f"{path}: cannot read weights: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FeatureError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


# -- images -> tensors ---------------------------------------------------------------------------------

def to_tensor(images: Sequence[np.ndarray] | np.ndarray, size: int, device: str | torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, size, size] in [0, 1] (bilinear, antialiased)."""
    arr = np.stack([np.asarray(im) for im in images]) if not isinstance(images, np.ndarray) else images
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class FeatureExtractor:
    """A frozen image network turning uint8 views into one feature row each."""

    kind: str = ""

    def __init__(self, model: nn.Module, *, dim: int, input_size: int, source: str, fingerprint: str,
                 details: dict[str, Any], device: str = "cpu", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim, self.input_size, self.source = int(dim), int(input_size), source
        self.fingerprint = fingerprint
        self.details = details
        self.device = device
        # the network's input normalisation ([0, 1] RGB -> (x - mean) / std), when it has one
        self._mean = None if mean is None else torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = None if std is None else torch.tensor(std, device=device).view(1, 3, 1, 1)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self._mean is None:
            raise NotImplementedError
        return (x - self._mean) / self._std

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        x = self._prepare(to_tensor(images, self.input_size, self.device))
        out = self._forward(x)
        return out.float().cpu().numpy().reshape(len(x), -1)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "input_size": self.input_size, "source": self.source,
                "fingerprint": self.fingerprint, **self.details}


# -- Inception-V3 ---------------------------------------------------------------------------------------

def _fid_blocks():
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class FIDInceptionA(InceptionA):
        """InceptionA whose average pool ignores the padding (TensorFlow's behaviour)."""

        def forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
            return torch.cat([b1, b5, b3, bp], 1)

    class FIDInceptionC(InceptionC):
        def forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
            bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
            return torch.cat([b1, b7, bd, bp], 1)

    class FIDInceptionE(InceptionE):
        def __init__(self, in_channels: int, pool: str) -> None:
            super().__init__(in_channels)
            self.pool = pool

        def forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            if self.pool == "max":  # the last block of the TF network max-pools
                bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                bp = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            return torch.cat([b1, b3, bd, self.branch_pool(bp)], 1)

    return FIDInceptionA, FIDInceptionC, FIDInceptionE


def build_inception(fmt: str) -> nn.Module:
    """An uninitialised Inception-V3 in the layout of ``fmt`` (``torchvision`` or ``pytorch-fid``)."""
    from torchvision.models import inception_v3

    if fmt == "torchvision":
        return inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    if fmt != "pytorch-fid":
        raise FeatureError(f"unknown Inception format {fmt!r}; choose from {INCEPTION_FORMATS}")
    A, C, E = _fid_blocks()
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008, transform_input=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = A(192, pool_features=32), A(256, pool_features=64), A(288, pool_features=64)
    net.Mixed_6b = C(768, channels_7x7=128)
    net.Mixed_6c, net.Mixed_6d = C(768, channels_7x7=160), C(768, channels_7x7=160)
    net.Mixed_6e = C(768, channels_7x7=192)
    net.Mixed_7b, net.Mixed_7c = E(1280, "avg"), E(2048, "max")
    return net


def detect_inception_format(sd: dict[str, torch.Tensor]) -> str:
    fc = sd.get("fc.weight")
    if fc is None:
        raise FeatureError("not an Inception-V3 state dict (no fc.weight)")
    return "pytorch-fid" if fc.shape[0] == 1008 else "torchvision"


class InceptionFeatures(FeatureExtractor):
    """Inception-V3 2048-d pool features (see the module docstring)."""

    kind = "inception"

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0


def load_inception(path: str | Path, fmt: str = "auto", input_size: int = 299, device: str = "cpu") -> InceptionFeatures:
    """Inception-V3 pool features from a torchvision or pytorch-fid state dict file."""
    path = Path(path)
    if fmt not in INCEPTION_FORMATS:
        raise FeatureError(f"unknown Inception format {fmt!r}; choose from {INCEPTION_FORMATS}")
    if input_size < 75:
        raise FeatureError(f"Inception-V3 needs an input of at least 75 px, got {input_size}")
    sd = load_state_dict(path)
    found = detect_inception_format(sd) if fmt == "auto" else fmt
    net = build_inception(found)
    if found == "torchvision" and not any(k.startswith("AuxLogits.") for k in sd):
        net.AuxLogits = None
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise FeatureError(f"{path}: not a {found} Inception-V3 state dict: {str(exc).splitlines()[0]}") from exc
    net.fc = nn.Identity()
    net.dropout = nn.Identity()
    fp = _fingerprint("inception", [path], {"format": found, "input_size": input_size})
    return InceptionFeatures(net, dim=2048, input_size=input_size, source=str(path), fingerprint=fp,
                             details=_label({"format": found, "layer": "pool3 (2048-d, before the classifier)",
                                             "preprocess": f"bilinear antialiased resize to {input_size}, x*2-1"}, path),
                             device=device)


# -- DINOv2 ---------------------------------------------------------------------------------------------

class DinoFeatures(FeatureExtractor):
    """DINOv2 CLS-token features (see the module docstring)."""

    kind = "dinov2"

    def __init__(self, *args, hf: bool, **kw) -> None:
        super().__init__(*args, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kw)
        self.hf = hf

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hf:
            return self.model(pixel_values=x).pooler_output
        return self.model(x)


def load_dinov2(folder: str | Path, input_size: int = 224, device: str = "cpu") -> DinoFeatures:
    """DINOv2 CLS features from a Hugging Face (``model_type: dinov2``) or timm (``architecture``) folder."""
    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FeatureError(f"{folder}: not a DINOv2 model folder (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise FeatureError(f"{cfg_file}: unreadable config: {exc}") from exc
    files = [p for p in _weights_in(folder) if p.name != "preprocessor_config.json"]
    if cfg.get("model_type") == "dinov2":
        from transformers import Dinov2Model

        try:
            net = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise FeatureError(f"{folder}: cannot load the Hugging Face DINOv2 model: {exc}") from exc
        dim, hf, layout = int(net.config.hidden_size), True, "huggingface (pooler_output: layer-normed CLS)"
    elif "architecture" in cfg:
        import timm

        if "dinov2" not in str(cfg["architecture"]):
            raise FeatureError(f"{folder}: timm architecture {cfg['architecture']!r} is not a DINOv2 ViT")
        try:
            net = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0, img_size=input_size)
        except Exception as exc:
            raise FeatureError(f"{folder}: cannot load the timm DINOv2 model: {exc}") from exc
        dim, hf, layout = int(net.num_features), False, "timm (num_classes=0: normed CLS token)"
    else:
        raise FeatureError(f"{cfg_file}: neither a Hugging Face DINOv2 config (model_type: dinov2) nor a timm "
                           "config (architecture)")
    fp = _fingerprint("dinov2", files, {"input_size": input_size, "layout": layout})
    return DinoFeatures(net, dim=dim, input_size=input_size, source=str(folder), fingerprint=fp,
                        details=_label({"layout": layout,
                                        "preprocess": f"bilinear antialiased resize to {input_size}, ImageNet mean/std"},
                                       folder),
                        device=device, hf=hf)


# -- CLIP -----------------------------------------------------------------------------------------------

class ClipFeatures(FeatureExtractor):
    """open_clip image embeddings, plus :meth:`encode_text` for the prompts."""

    kind = "clip"

    def __init__(self, *args, tokenizer, **kw) -> None:
        super().__init__(*args, **kw)  # mean, std: the CLIP model's
        self.tokenizer = tokenizer

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(tokens).float().cpu().numpy()


def load_clip(arch: str, weights: str | Path | None, device: str = "cpu", allow_random: bool = False) -> ClipFeatures:
    """An open_clip CLIP (``arch``: any open_clip or rewardkit config name) with local ``weights``."""
    from rewardkit.models.backbone import BackboneConfig, BackboneError, create_backbone, get_tokenizer, image_preprocess_cfg

    if weights in (None, "", "none") and not allow_random:
        raise FeatureError(f"CLIP {arch!r}: no weights given (a local open_clip checkpoint file or folder)")
    if weights not in (None, "", "none") and not Path(weights).exists():
        raise FeatureError(f"{weights}: CLIP weights not found")
    try:
        model = create_backbone(BackboneConfig(name=arch, pretrained=None if weights in (None, "", "none") else str(weights)))
    except BackboneError as exc:
        raise FeatureError(str(exc)) from exc
    pp = image_preprocess_cfg(model)
    files: list[Path] = []
    if weights not in (None, "", "none"):
        w = Path(weights)
        files = [w] if w.is_file() else _weights_in(w)
    fp = _fingerprint("clip", files, {"arch": arch, "preprocess": pp})
    dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[-1])
    return ClipFeatures(model, dim=dim, input_size=pp["size"], source=str(weights) if weights else "random-init",
                        fingerprint=fp, details=_label({"arch": arch, "preprocess": f"bilinear antialiased resize to "
                                                        f"{pp['size']}, mean {pp['mean']}, std {pp['std']}"},
                                                       weights if weights not in (None, "", "none") else None),
                        device=device, tokenizer=get_tokenizer(BackboneConfig(name=arch)), mean=pp["mean"], std=pp["std"])


# -- renders -> features (cached) ----------------------------------------------------------------------

def load_extractors(cfg: Any, device: str) -> dict[str, FeatureExtractor]:
    """The extractors an :class:`~rewardkit.eval.generation.protocol.EvalGenConfig` configures (``inception``,
    ``dinov2``, ``clip``); unconfigured ones are left out."""
    from rewardkit.eval.generation.inputs import EvalInputError

    ext: dict[str, FeatureExtractor] = {}
    if cfg.inception.weights:
        ext["inception"] = load_inception(cfg.inception.weights, cfg.inception.format, cfg.inception.input_size, device)
    if cfg.dinov2.weights:
        ext["dinov2"] = load_dinov2(cfg.dinov2.weights, cfg.dinov2.input_size, device)
    if cfg.clip.weights:
        ext["clip"] = load_clip(cfg.clip.arch, cfg.clip.weights, device)
    if not ext:
        raise EvalInputError("no extractor configured: set inception.weights, dinov2.weights and/or clip.weights "
                             "(local files; docs/generator-evaluation.md names the paper's)")
    return ext


def feature_caches(root: str | Path, extractors: dict[str, FeatureExtractor]) -> dict[str, Any]:
    """One :class:`rewardkit.render.features.FeatureCache` per extractor under ``root``, keyed by its
    ``fingerprint``."""
    from rewardkit.render.features import FeatureCache

    return {k: FeatureCache(root, e.fingerprint) for k, e in extractors.items()}


def decoding(background: Sequence[int]) -> dict[str, Any]:
    """How :func:`featurize` decodes view files (the feature cache's ``decode_key``)."""
    return {"mode": "rgb", "background": [int(c) for c in background]}


def featurize(renders: dict[str, list[Path]], extractors: dict[str, FeatureExtractor], caches: dict[str, Any], *,
              background: Sequence[int], batch_size: int = 32, progress: bool = True,
              label: str = "features") -> dict[str, dict[str, np.ndarray]]:
    """``{extractor: {render name: features [views, dim]}}`` of the view files of each render: read from
    ``caches`` (:func:`feature_caches`, keyed by the files and :func:`decoding`), the rest decoded once (alpha
    composited over ``background``) for all extractors and computed in batches of ``batch_size`` views across
    renders (:func:`rewardkit.render.features.cached_features`)."""
    from rewardkit.progress import progress_bar
    from rewardkit.render.features import Encoder, cached_features
    from rewardkit.render.folder import open_view

    def decode(name: str) -> list[np.ndarray]:
        return [np.asarray(open_view(p, background=background)) for p in renders[name]]

    encoders = {k: Encoder(caches[k], lambda batch, e=e: e(np.stack(batch))) for k, e in extractors.items()}
    total = sum(len(v) for v in renders.values())
    with progress_bar(label, disable=not progress or total == 0) as bar:
        task = bar.add_task("", total=total)
        return cached_features(renders, decode, encoders, decode_key=decoding(background), batch_size=batch_size,
                               progress=lambda name, n: bar.update(task, advance=n, description=name))

__all__ = [
    "ClipFeatures", "DinoFeatures", "FeatureError", "FeatureExtractor", "INCEPTION_FORMATS", "InceptionFeatures",
    "RANDOM_INIT_SUFFIX", "random_init_label",
    "build_inception", "decoding", "detect_inception_format", "feature_caches", "featurize", "load_clip", "load_dinov2",
    "load_extractors", "load_inception", "load_state_dict", "to_tensor",
]
