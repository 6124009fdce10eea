"""Mesh loading, validation and normalization into the canonical frame."""

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

__all__ = [
    "DEFAULT_MAX_FACES", "SUPPORTED_FORMATS", "UP_AXES", "LoadedMesh", "LoadOptions", "MeshError",
    "from_trimesh", "load_mesh", "normalize_meshes", "sha256_file", "up_rotation",
]
