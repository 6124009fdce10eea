"""Procedural occupancy shapes: the supervised warm-start set and the targets of the demo's rewards.

Each shape is a function ``resolution -> bool[R, R, R]`` in the tokenizer frame (axes x, y, z; +Y up),
with a prompt ("a cube", ...) and two short descriptions the warm start teaches the policy to write as
its step-1 semantic plan and its step-2 visual detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["DemoShape", "DEMO_SHAPES", "demo_shape", "jitter"]


def _grid(res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(res) + 0.5) / res - 0.5  # voxel centres in [-0.5, 0.5]
    return np.meshgrid(c, c, c, indexing="ij")


def _cube(res: int) -> np.ndarray:
    x, y, z = _grid(res)
    return (np.abs(x) < 0.3) & (np.abs(y) < 0.3) & (np.abs(z) < 0.3)


def _sphere(res: int) -> np.ndarray:
    x, y, z = _grid(res)
    return x**2 + y**2 + z**2 < 0.4**2


def _cylinder(res: int) -> np.ndarray:
    x, y, z = _grid(res)
    return (x**2 + z**2 < 0.3**2) & (np.abs(y) < 0.45)


def _cone(res: int) -> np.ndarray:
    x, y, z = _grid(res)
    r = 0.42 * (0.45 - y) / 0.9
    return (x**2 + z**2 < r**2) & (np.abs(y) < 0.45)


def _table(res: int) -> np.ndarray:
    x, y, z = _grid(res)
    top = (np.abs(x) < 0.45) & (np.abs(z) < 0.45) & (y > 0.15) & (y < 0.4)
    legs = (np.abs(np.abs(x) - 0.35) < 0.1) & (np.abs(np.abs(z) - 0.35) < 0.1) & (y > -0.45) & (y <= 0.15)
    return top | legs


def _arch(res: int) -> np.ndarray:
    x, y, z = _grid(res)
    outer = (np.abs(x) < 0.45) & (y > -0.45) & (y < 0.3) & (np.abs(z) < 0.2)
    hole = (np.abs(x) < 0.2) & (y < 0.05)
    return outer & ~hole


@dataclass(frozen=True)
class DemoShape:
    name: str
    prompt: str
    plan: str  # step-1 semantic plan (global shape primitives)
    detail: str  # step-2 visual detail (local attributes)
    make: Callable[[int], np.ndarray]

    def occupancy(self, resolution: int) -> np.ndarray:
        return self.make(resolution)


DEMO_SHAPES: dict[str, DemoShape] = {
    s.name: s
    for s in (
        DemoShape("cube", "a cube", "one box primitive , centered", "flat faces , sharp edges , symmetric", _cube),
        DemoShape("sphere", "a ball", "one sphere primitive , centered", "round smooth surface , symmetric", _sphere),
        DemoShape("cylinder", "a tall cylinder", "one upright cylinder primitive , centered", "round side , flat caps , symmetric", _cylinder),
        DemoShape("cone", "a cone", "one upright cone primitive , wide base", "pointed top , round base , symmetric", _cone),
        DemoShape("table", "a small table", "one flat slab on four legs", "four thin legs at the corners , symmetric", _table),
        DemoShape("arch", "an arch", "one block with an opening below", "two pillars , flat top , symmetric", _arch),
    )
}


def demo_shape(key: str) -> DemoShape:
    """Look a shape up by name or by its prompt."""
    if key in DEMO_SHAPES:
        return DEMO_SHAPES[key]
    for s in DEMO_SHAPES.values():
        if s.prompt == key:
            return s
    raise KeyError(f"no demo shape named or prompted {key!r} (known: {sorted(DEMO_SHAPES)})")


def jitter(occ: np.ndarray, rng: np.random.Generator, max_shift: int = 1, p_dilate: float = 0.0) -> np.ndarray:
    """A perturbed copy: shifted by up to ``max_shift`` voxels per axis (no wrap-around), optionally dilated."""
    out = np.asarray(occ, dtype=bool)
    for axis in range(3):
        s = int(rng.integers(-max_shift, max_shift + 1))
        if s:
            out = np.roll(out, s, axis=axis)
            sl = [slice(None)] * 3
            sl[axis] = slice(0, s) if s > 0 else slice(s, None)
            out[tuple(sl)] = False
    if p_dilate > 0 and rng.random() < p_dilate:
        grown = out.copy()
        for axis in range(3):
            grown |= np.roll(out, 1, axis=axis) | np.roll(out, -1, axis=axis)
        out = grown
    return out
