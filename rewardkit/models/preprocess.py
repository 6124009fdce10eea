"""A tower's input from rendered views: resize (bounded memory) and normalise. One implementation, used by the
stage reward models (:meth:`rewardkit.models.StageRewardModel.preprocess`) and the CLIP baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREPROCESS_CHUNK_PIXELS = 2 ** 21  # source pixels converted to float32 at once


def preprocess_views(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor, *,
                     mode: str = "bilinear", center_crop: bool = False) -> torch.Tensor:
    """Views [N, 3, H, W] (uint8 or float in [0, 1]) as a tower's input: resized to ``size`` (``mode``:
    bilinear or bicubic, antialiased; ``center_crop``: to a square first, as CLIP's CenterCrop) and normalised
    by ``mean`` / ``std`` (on whose device the result is). Views larger than ``size`` are converted a few at a
    time (at most ``PREPROCESS_CHUNK_PIXELS`` source pixels per step), so a batch of 1024² uint8 renders never
    exists as one float32 copy beside its resized result."""
    n, hw = images.shape[0], images.shape[-2] * images.shape[-1]
    if images.shape[-2:] != (size, size) and n > 1 and n * hw > PREPROCESS_CHUNK_PIXELS:
        k = max(1, PREPROCESS_CHUNK_PIXELS // hw)
        return torch.cat([preprocess_views(images[i:i + k], size, mean, std, mode=mode, center_crop=center_crop)
                          for i in range(0, n, k)])
    if images.dtype == torch.uint8:
        images = images.to(mean.device).float().div_(255.0)
    images = images.to(mean.device, torch.float32)
    if images.shape[-2:] != (size, size):
        h, w = images.shape[-2:]
        if center_crop and h != w:
            m = min(h, w)
            top, left = (h - m) // 2, (w - m) // 2
            images = images[..., top:top + m, left:left + m]
        images = F.interpolate(images, size=(size, size), mode=mode, align_corners=False, antialias=True)
        if mode == "bicubic":
            images = images.clamp(0.0, 1.0)
    return (images - mean) / std


__all__ = ["PREPROCESS_CHUNK_PIXELS", "preprocess_views"]
