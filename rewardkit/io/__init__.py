"""Mesh loading, validation and normalization into the canonical frame."""

from rewardkit.io.limits import DEFAULT_LIMITS, MeshLimits
from rewardkit.io.mesh import (
    DEFAULT_MAX_FACES,
    SUPPORTED_FORMATS,
    UP_AXES,
    LoadedMesh,
    LoadOptions,
    MeshError,
    from_trimesh,
    load_mesh,
    normalize_meshes,
    sha256_file,
    up_rotation,
)
from rewardkit.io.isolate import IsolatedLoader, default_loader, load_mesh_isolated

__all__ = [
    "DEFAULT_LIMITS", "DEFAULT_MAX_FACES", "IsolatedLoader", "MeshLimits", "SUPPORTED_FORMATS", "UP_AXES", "LoadedMesh", "LoadOptions", "MeshError",
    "default_loader", "from_trimesh", "load_mesh", "load_mesh_isolated", "normalize_meshes", "sha256_file", "up_rotation",
]
