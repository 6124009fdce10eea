"""Training-time augmentation of a candidate's views that keeps what both questions judge.

Per candidate (one draw for all of its views, so the views stay one consistent object):

- ``hflip``: probability of a horizontal mirror (shape, parts, proportions and texture quality are
  mirror-invariant; the camera protocol's azimuths are symmetric enough for a reward model);
- ``shift``: a random translation of up to ``shift`` pixels in x and y, the uncovered border filled
  with the view's own background colour (its corner pixel), never wrapped round.

Colour is left alone on purpose: "wrong colour for the prompt" is a local-stage judgement. Only the
training split is augmented; validation, test, probes and export see the renders as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Augment:
    """Training-split augmentation of a candidate's views (see the module docstring): ``hflip``
    probability and ``shift`` in pixels, one draw per candidate."""
    hflip: float = 0.0
    shift: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"augment hflip must be a probability in [0, 1], got {self.hflip}")
        if self.shift < 0:
            raise ValueError(f"augment shift must be >= 0 pixels, got {self.shift}")

    @property
    def active(self) -> bool:
        return self.hflip > 0 or self.shift > 0

    def __call__(self, views: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``views`` [V, C, H, W] (any dtype) -> an augmented copy (the input is never modified)."""
        out = views
        if self.hflip > 0 and rng.random() < self.hflip:
            out = out.flip(-1)
        if self.shift > 0:
            dx, dy = (int(v) for v in rng.integers(-self.shift, self.shift + 1, size=2))
            if dx or dy:
                out = translate(out, dx, dy)
        return out


def translate(views: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Shift [V, C, H, W] by ``dx`` (right) and ``dy`` (down) pixels, filling with each view's corner colour."""
    v, c, h, w = views.shape
    fill = views[:, :, :1, :1].expand(v, c, h, w)
    out = fill.clone()
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, :, yd, xd] = views[:, :, ys, xs]
    return out
