"""Procedural colours and texture images for the demo objects.

Every demo object carries one texture atlas (an RGB image) split into two square tiles: the *main*
tile holds the prompted material ("wooden", "striped", ...) tinted with the prompted colour, the
*secondary* tile a flat accent colour (wheels, lamp poles, caps). Parts map into one tile or the other
by their UVs (see :mod:`rewardkit.demo.objects`). All functions are pure functions of their arguments
and a ``numpy.random.Generator``, so a seed fixes every pixel.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageFilter

TILE = 128  # texels per tile side; the atlas is (TILE, 2 * TILE)

# prompt colour word -> RGB (0-255). Hues spread round the wheel so a "wrong colour" is unmistakable.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "orange": (235, 125, 20),
    "yellow": (235, 210, 35),
    "green": (40, 160, 50),
    "blue": (35, 70, 205),
    "purple": (130, 40, 170),
    "pink": (235, 110, 170),
}

# prompt material word -> pattern drawn in the main tile: 2-3 periods per tile, so the structure stays
# visible at demo render sizes (64 px), so blurring or noising the texture changes what a camera sees.
MATERIALS = ("wooden", "striped", "checkered", "dotted", "marbled")

# flat accent colours for secondary parts
ACCENTS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 28),
    "silver": (170, 172, 178),
    "white": (235, 235, 230),
}


def _hue(rgb: tuple[int, int, int]) -> float:
    return colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))[0]


def far_colour(colour: str, rng: np.random.Generator) -> str:
    """A palette colour whose hue is far (>= 90 degrees) from ``colour``'s, chosen with ``rng``."""
    h = _hue(COLOURS[colour])
    far = []
    for name, rgb in COLOURS.items():
        d = abs(_hue(rgb) - h)
        d = min(d, 1.0 - d)
        if name != colour and d >= 0.25:
            far.append(name)
    if not far:  # pragma: no cover - the palette above always has far colours
        far = [c for c in COLOURS if c != colour]
    return str(far[int(rng.integers(len(far)))])


def dominant_colour(rgb: np.ndarray, min_saturation: float = 0.25, min_value: float = 0.2,
                    min_coloured: float = 0.3, min_concentration: float = 0.75, max_distance: float = 30.0) -> str | None:
    """The palette word (:data:`COLOURS`) of an image's dominant hue, or ``None`` when it has none.

    Pixels with HSV saturation >= ``min_saturation`` and value >= ``min_value`` are *coloured*; they must be
    at least ``min_coloured`` of the image, their saturation-weighted hues concentrated (mean resultant
    length >= ``min_concentration``: one hue, not a rainbow), and the mean hue within ``max_distance``
    degrees of the nearest palette colour's hue. A photo crop that passes is one a colour word describes."""
    x = rgb[..., :3].reshape(-1, 3).astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    c = mx - mn
    s = np.where(mx > 0, c / np.where(mx > 0, mx, 1), 0)
    keep = (s >= min_saturation) & (mx >= min_value) & (c > 0)
    if keep.mean() < min_coloured:
        return None
    r, g, b, cs = x[keep, 0], x[keep, 1], x[keep, 2], c[keep]
    m = mx[keep]
    h = np.where(m == r, ((g - b) / cs) % 6, np.where(m == g, (b - r) / cs + 2, (r - g) / cs + 4)) / 6.0
    w = s[keep]
    vec = np.array([(w * np.cos(2 * np.pi * h)).sum(), (w * np.sin(2 * np.pi * h)).sum()]) / w.sum()
    if float(np.hypot(*vec)) < min_concentration:
        return None
    mean = float(np.arctan2(vec[1], vec[0]) / (2 * np.pi)) % 1.0
    best, dist = None, 1.0
    for name, col in COLOURS.items():
        d = abs(_hue(col) - mean)
        d = min(d, 1.0 - d)
        if d < dist:
            best, dist = name, d
    return best if dist * 360.0 <= max_distance else None


def _shade(rgb: tuple[int, int, int], f: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float32) * f, 0, 255)


def pattern_tile(material: str, colour: str, rng: np.random.Generator, size: int = TILE) -> np.ndarray:
    """A ``size x size x 3`` uint8 tile of ``material``'s pattern in ``colour``."""
    base = COLOURS[colour]
    light, dark = _shade(base, 1.12), _shade(base, 0.45)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = float(rng.uniform(0, 2 * np.pi))
    if material == "wooden":
        # wavy grain rings: period ~1/7 of the tile, darker late-wood lines
        warp = 0.06 * np.sin(2 * np.pi * (y * 2.0) + phase)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * (x + warp) + phase)
        t = t**3
    elif material == "striped":
        t = (np.sin(2 * np.pi * 2.5 * (x + y) + phase) > 0).astype(np.float32)
    elif material == "checkered":
        n = 3
        t = ((np.floor(x * n) + np.floor(y * n)) % 2).astype(np.float32)
    elif material == "dotted":
        n = 3
        cx, cy = (x * n) % 1.0 - 0.5, (y * n) % 1.0 - 0.5
        t = ((cx**2 + cy**2) < 0.28**2).astype(np.float32)
    elif material == "marbled":
        turb = 0.0
        for k in range(1, 4):
            turb = turb + np.sin(2 * np.pi * (k * 2.0) * (x * rng.uniform(0.6, 1.4) + y) + rng.uniform(0, 6)) / k
        t = 0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * x + 1.5 * turb + phase)
        t = t**2
    else:
        raise ValueError(f"unknown material {material!r}; known: {MATERIALS}")
    # t=1 -> dark pattern colour, t=0 -> light base colour
    img = light[None, None, :] * (1.0 - t[..., None]) + dark[None, None, :] * t[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def flat_tile(rgb: tuple[int, int, int], size: int = TILE) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (size, size, 3)).copy()


def atlas(main: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Main tile on the left, secondary tile on the right."""
    return np.concatenate([main, secondary], axis=1)


def noise_tile(tile: np.ndarray, rng: np.random.Generator, block: int = 8, amplitude: float = 110.0) -> np.ndarray:
    """Blocky colour noise (blocks of ``block`` texels survive the renderer's texture filtering)."""
    h, w, _ = tile.shape
    small = rng.normal(0.0, amplitude, size=(h // block + 1, w // block + 1, 3)).astype(np.float32)
    big = np.repeat(np.repeat(small, block, axis=0), block, axis=1)[:h, :w]
    return np.clip(tile.astype(np.float32) + big, 0, 255).astype(np.uint8)


def blur_tile(tile: np.ndarray, radius: float = 18.0) -> np.ndarray:
    """A strong Gaussian blur: the pattern washes out to its mean colour."""
    return np.asarray(Image.fromarray(tile).filter(ImageFilter.GaussianBlur(radius=radius)))


def grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` turned to its luminance (ITU-R 601 weights), still 3 channels."""
    lum = rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(np.clip(np.rint(lum), 0, 255)[..., None], 3, axis=-1).astype(np.uint8)


def hue_rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` with its hue turned by ``degrees`` (saturation and value kept)."""
    x = rgb[..., :3].astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    v, c = mx, mx - mn
    s = np.where(mx > 0, c / np.where(mx > 0, mx, 1), 0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    cs = np.where(c > 0, c, 1)
    h = np.where(mx == r, ((g - b) / cs) % 6, np.where(mx == g, (b - r) / cs + 2, (r - g) / cs + 4)) / 6.0
    h = np.where(c > 0, (h + degrees / 360.0) % 1.0, 0)
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(table):
        m = i == k
        out[..., 0] = np.where(m, rr, out[..., 0])
        out[..., 1] = np.where(m, gg, out[..., 1])
        out[..., 2] = np.where(m, bb, out[..., 2])
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
