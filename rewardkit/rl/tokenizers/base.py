"""The common interface of 3D shape tokenizers: tokens <-> occupancy grid -> mesh.

A shape tokenizer turns an object into a fixed-length sequence of discrete codes (what an
autoregressive policy emits between ``<mesh-start>`` and ``<mesh-end>``) and back. Every tokenizer
goes through a cubic binary occupancy grid in the ShapeLLM-Omni frame: the object normalized into
[-0.5, 0.5]^3, grid index ``(i, j, k)`` = axes ``(x, y, z)``, +Y up, voxel ``v`` centred at
``(v + 0.5) / R - 0.5``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import trimesh

__all__ = ["ShapeTokenizer", "fit_codes", "occupancy_to_mesh", "voxelize_mesh"]

# the six face directions of a voxel and, for each, the 4 corners of that face (unit cube at origin),
# ordered counter-clockwise seen from outside so normals point out.
_FACES = (
    ((1, 0, 0), ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1))),
    ((-1, 0, 0), ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0))),
    ((0, 1, 0), ((0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0))),
    ((0, -1, 0), ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1))),
    ((0, 0, 1), ((0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))),
    ((0, 0, -1), ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0))),
)


def fit_codes(codes: list[int], n: int) -> np.ndarray:
    """ShapeLLM-Omni's parse rule: pad a short code sequence with its last code, truncate a long one."""
    codes = list(codes)[:n]
    if len(codes) < n:
        codes = codes + [codes[-1] if codes else 0] * (n - len(codes))
    return np.asarray(codes, dtype=np.int64)


def occupancy_to_mesh(occupancy: np.ndarray) -> trimesh.Trimesh | None:
    """Surface of the occupied voxels (their exposed cube faces), in [-0.5, 0.5]^3.

    Returns ``None`` for an empty grid (no surface to score). The grid is kept on the mesh as
    ``mesh.metadata["occupancy"]`` so occupancy-level rewards need not re-voxelize.
    """
    occ = np.asarray(occupancy, dtype=bool)
    if occ.ndim != 3 or len(set(occ.shape)) != 1:
        raise ValueError(f"occupancy must be a cubic 3-D grid, got shape {occ.shape}")
    if not occ.any():
        return None
    res = occ.shape[0]
    padded = np.pad(occ, 1)
    verts, faces = [], []
    n = 0
    for direction, corners in _FACES:
        neighbour = np.roll(padded, shift=tuple(-d for d in direction), axis=(0, 1, 2))[1:-1, 1:-1, 1:-1]
        idx = np.argwhere(occ & ~neighbour)  # voxels whose face in `direction` is exposed
        if len(idx) == 0:
            continue
        quad = idx[:, None, :] + np.asarray(corners)[None, :, :]  # [F, 4, 3]
        verts.append(quad.reshape(-1, 3))
        base = n + 4 * np.arange(len(idx))[:, None]
        faces.append(np.concatenate([base + [0, 1, 2], base + [0, 2, 3]], axis=0))
        n += 4 * len(idx)
    vertices = np.concatenate(verts).astype(np.float64) / res - 0.5
    mesh = trimesh.Trimesh(vertices=vertices, faces=np.concatenate(faces), process=True)
    mesh.metadata["occupancy"] = occ
    return mesh


def voxelize_mesh(mesh: trimesh.Trimesh, resolution: int, fill: bool = True) -> np.ndarray:
    """Occupancy grid of a mesh after normalizing it into [-0.5, 0.5]^3 (centred, uniform scale)."""
    if "occupancy" in mesh.metadata and np.asarray(mesh.metadata["occupancy"]).shape == (resolution,) * 3:
        return np.asarray(mesh.metadata["occupancy"], dtype=bool)
    m = mesh.copy()
    lo, hi = m.bounds
    scale = float((hi - lo).max())
    if scale <= 0:
        raise ValueError("cannot voxelize a mesh with empty bounds")
    m.apply_translation(-(lo + hi) / 2.0)
    m.apply_scale((1.0 - 1e-6) / scale)
    grid = m.voxelized(pitch=1.0 / resolution)
    if fill:
        grid = grid.fill()
    idx = np.floor((grid.points + 0.5) * resolution).astype(int)
    idx = idx[np.all((idx >= 0) & (idx < resolution), axis=1)]
    occ = np.zeros((resolution,) * 3, dtype=bool)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return occ


class ShapeTokenizer(ABC):
    """tokens <-> occupancy (``decode`` / ``encode``) -> mesh (``to_mesh``).

    Attributes every implementation sets: ``resolution`` (grid side), ``num_tokens`` (codes per
    object) and ``codebook_size`` (codes are ``0 .. codebook_size - 1``, i.e. ``<mesh0>`` ...).
    """

    name: str = "base"
    resolution: int
    num_tokens: int
    codebook_size: int

    @abstractmethod
    def encode(self, occupancy: np.ndarray) -> np.ndarray:
        """``[R,R,R]`` or ``[B,R,R,R]`` bool -> ``[num_tokens]`` or ``[B,num_tokens]`` int64."""

    @abstractmethod
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """``[num_tokens]`` or ``[B,num_tokens]`` ints -> bool occupancy ``[R,R,R]`` or ``[B,R,R,R]``."""

    def to_mesh(self, occupancy: np.ndarray) -> trimesh.Trimesh | None:
        mesh = occupancy_to_mesh(occupancy)
        if mesh is not None:
            mesh.metadata["tokenizer"] = self.name
        return mesh

    def tokens_to_mesh(self, tokens: np.ndarray) -> trimesh.Trimesh | None:
        return self.to_mesh(self.decode(np.asarray(tokens)))

    def voxelize(self, mesh: trimesh.Trimesh) -> np.ndarray:
        return voxelize_mesh(mesh, self.resolution)

    def fit_length(self, codes: list[int]) -> np.ndarray:
        return fit_codes(codes, self.num_tokens)

    def _check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens, dtype=np.int64)
        if t.shape[-1] != self.num_tokens:
            raise ValueError(f"{self.name}: expected {self.num_tokens} tokens, got {t.shape[-1]}")
        if t.size and (t.min() < 0 or t.max() >= self.codebook_size):
            raise ValueError(f"{self.name}: codes must lie in [0, {self.codebook_size})")
        return t
