"""Resource limits for reading mesh files that may come from anyone (generators, annotators' tools, RL jobs
sending meshes to ``rewardkit serve``).

Every limit is checked *before* its cost is paid: file sizes from ``os.stat`` before a byte is read,
texture sizes from the image header before any pixel is decoded, faces and vertices (after glTF
instancing) from the glTF JSON / OBJ, OFF, PLY and STL headers before any geometry is built. On top of
that, :class:`rewardkit.io.isolate.IsolatedLoader` (used by ``rewardkit render``, ``rewardkit score``,
``score_meshes`` and the service) loads each mesh in a worker process with a wall-clock timeout and a
memory cap, so a file that still manages to hang or exhaust memory costs one failed item, not the batch.

docs/security.md ("Mesh files") lists the defaults and how to change them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ENV_PREFIX = "REWARDKIT_MESH_"
"""Every field can be set from the environment as ``REWARDKIT_MESH_<FIELD NAME IN CAPITALS>``."""


@dataclass(frozen=True)
class MeshLimits:
    """Limits on what reading one mesh may cost. The defaults fit any mesh a text-to-3D generator writes
    (4K textures, 2M triangles) with room to spare; raise them for scans or CAD assemblies."""

    max_file_bytes: int = 256 * 1024 * 1024
    """The mesh file and each file it names (MTL, textures, glTF buffers), checked with ``os.stat``."""
    max_total_bytes: int = 512 * 1024 * 1024
    """All files of one mesh together."""
    max_resources: int = 64
    """Files one mesh may name (MTL libraries, texture images, glTF buffers and images)."""
    max_texture_pixels: int = 4096 * 4096
    """Pixels (width x height) of one texture image, read from its header before decoding. A bigger
    texture makes the mesh fail with a :class:`MeshError` naming the image (it is not silently dropped
    or downscaled: a local-texture score of a mesh rendered without its texture would be wrong)."""
    max_faces: int = 2_000_000
    """Triangles after glTF instancing (600 instances of a 20k-face part count 12M)."""
    max_vertices: int = 4_000_000
    """Vertices after glTF instancing."""
    max_json_bytes: int = 32 * 1024 * 1024
    """Size of a glTF/GLB JSON header."""
    max_abs_coordinate: float = 1e12
    """Coordinates beyond this (or non-finite ones) make the mesh fail: normalizing them gives a scale
    of 0 or inf and a blank render."""
    resource_root: str | None = None
    """Folder the files a mesh names may be read from. Default: the mesh's own folder. Absolute paths,
    ``../`` escapes, symlinks out of it, devices, FIFOs and sockets are never read."""
    load_timeout_s: float = 120.0
    """Wall-clock time one mesh may take to load in the isolated loader; it is then stopped."""
    max_memory_bytes: int = 4 * 1024 * 1024 * 1024
    """Address space (RLIMIT_AS) of the isolated loader's worker process."""
    isolate: bool = True
    """Load each mesh in a worker process (timeout and memory cap). False: load in the calling process
    (every check above still applies, but no time or memory cap)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "MeshLimits":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: "os._Environ[str] | dict[str, str] | None" = None, **overrides: Any) -> "MeshLimits":
        """Defaults, overridden by ``REWARDKIT_MESH_*`` environment variables, then by ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    values[f.name] = raw.lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    values[f.name] = int(float(raw))
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: not a valid {type(default).__name__}") from None
        values.update(overrides)
        return cls(**values)


DEFAULT_LIMITS = MeshLimits()
