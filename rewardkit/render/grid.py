"""Tiling the views of one mesh into one image (used for annotation and reports)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import PIL.Image


def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) for ``n`` views: 2x3 for 6, 2x2 for 4, 2x4 for 8, unless ``cols`` is given."""
    if n <= 0:
        raise ValueError("a grid needs at least one image")
    if cols is None:
        rows = max(1, int(math.floor(math.sqrt(n))))
        rows = min(rows, 2) if n <= 8 else rows
        cols = math.ceil(n / rows)
    rows = math.ceil(n / cols)
    return rows, cols


def make_grid(
    images: Sequence["PIL.Image.Image | np.ndarray"],
    cols: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> PIL.Image.Image:
    """Tile same-sized images row by row; empty cells are filled with ``background``."""
    pil = [im if isinstance(im, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(im)) for im in images]
    rows, cols = grid_shape(len(pil), cols)
    w, h = pil[0].size
    if any(im.size != (w, h) for im in pil):
        raise ValueError("all images of a grid must have the same size")
    mode = "L" if all(im.mode == "L" for im in pil) else "RGB"
    fill = background[0] if mode == "L" else background
    canvas = PIL.Image.new(mode, (cols * w, rows * h), fill)
    for i, im in enumerate(pil):
        canvas.paste(im.convert(mode), ((i % cols) * w, (i // cols) * h))
    return canvas
