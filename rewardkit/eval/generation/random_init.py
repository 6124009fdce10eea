"""Random-init extractors in the real file formats, for the demo pipeline and the tests.

Each file is written the way its ecosystem writes it (a torchvision Inception-V3 state dict, a Hugging Face
DINOv2 folder, an open_clip checkpoint as safetensors) and loaded through the same code as downloaded
weights. Beside each goes a marker (:data:`~rewardkit.eval.generation.features.RANDOM_INIT_SUFFIX`), so
every extractor loaded from them, and every result computed with them, is labelled random-init: such
figures measure how far two sets of renders are apart in a random network's features, and are not
comparable with the paper's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LABEL = ("RANDOM-INIT {what} (demo stand-in, not pretrained weights): figures are not comparable with "
         "AR3D-R1's Table 4")


def _mark(path: Path, what: str, seed: int) -> None:
    marker = path / "random-init.json" if path.is_dir() else path.with_name(path.name + ".random-init.json")
    marker.write_text(json.dumps({"label": LABEL.format(what=what), "seed": seed}, indent=2) + "\n")


def write_random_inception(path: str | Path, seed: int = 0) -> Path:
    """A random-init torchvision Inception-V3 state dict (with its auxiliary head), as ``path``.

    The convolutions are He-initialized (torchvision's own init, a truncated normal of std 0.1, is about 3x
    too wide for the fan-in of the later layers: with batch-norm statistics at their defaults the
    activations then grow by orders of magnitude and the pool features overflow the cubic kernel). With
    He init the features have the scale of a trained network's (mean |x| about 0.2 on renders)."""
    from torchvision.models import inception_v3

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = inception_v3(weights=None, aux_logits=True, init_weights=True)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    _mark(path, "Inception-V3", seed)
    return path


def write_random_dinov2(folder: str | Path, seed: int = 0, hidden_size: int = 64, layers: int = 2, heads: int = 2,
                        image_size: int = 56) -> Path:
    """A small random-init Hugging Face DINOv2 folder (``config.json`` + ``model.safetensors``)."""
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(folder)
    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=2 * hidden_size, image_size=image_size, patch_size=14)
    Dinov2Model(cfg).save_pretrained(folder)
    _mark(folder, f"DINOv2 ({layers} layers, {hidden_size}-d)", seed)
    return folder


def write_random_clip(path: str | Path, arch: str = "rk-tiny", seed: int = 0) -> Path:
    """A random-init open_clip model of ``arch`` (a rewardkit or open_clip config) as a safetensors file."""
    from safetensors.torch import save_file

    from rewardkit.models.backbone import BackboneConfig, create_backbone

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = create_backbone(BackboneConfig(name=arch))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    _mark(path, f"CLIP {arch}", seed)
    return path


def write_random_init_extractors(folder: str | Path, *, seed: int = 0, clip_arch: str = "rk-tiny",
                                 dinov2: dict[str, Any] | None = None, inception_size: int = 299
                                 ) -> dict[str, dict[str, Any]]:
    """All three under ``folder``; returns the ``inception`` / ``dinov2`` / ``clip`` config sections that
    load them (merge into an :class:`~rewardkit.eval.generation.protocol.EvalGenConfig`)."""
    folder = Path(folder)
    inc = write_random_inception(folder / "inception_v3_random.pth", seed)
    dino = write_random_dinov2(folder / "dinov2_random", seed, **(dinov2 or {}))
    clip = write_random_clip(folder / f"clip_{clip_arch}_random.safetensors", clip_arch, seed)
    return {"inception": {"weights": str(inc), "format": "torchvision", "input_size": inception_size},
            "dinov2": {"weights": str(dino), "input_size": (dinov2 or {}).get("image_size", 56)},
            "clip": {"arch": clip_arch, "weights": str(clip)}}


__all__ = ["LABEL", "write_random_clip", "write_random_dinov2", "write_random_inception",
           "write_random_init_extractors"]
