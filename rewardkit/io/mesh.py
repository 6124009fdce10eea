"""Loading the meshes people actually have, and putting them into rewardkit's canonical frame.

``load_mesh`` reads GLB/glTF, OBJ (+MTL + textures), PLY, STL and OFF through trimesh, flattens
multi-part scenes with their node transforms, keeps materials (texture images, base colours, vertex
colours), validates the result and normalizes it: centred on its bounding-box centre, longest side 1
(so it fits [-0.5, 0.5]^3), with the configured up axis rotated onto +Y.

Every failure is a :class:`MeshError` naming the file and the reason. Missing texture images and MTL
files are not failures: they become warnings on the returned :class:`LoadedMesh` and the renderer uses a
fallback colour.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

SUPPORTED_FORMATS: dict[str, str] = {
    ".glb": "glb",
    ".gltf": "gltf",
    ".obj": "obj",
    ".ply": "ply",
    ".stl": "stl",
    ".off": "off",
}

UP_AXES = ("+x", "-x", "+y", "-y", "+z", "-z")

DEFAULT_MAX_FACES = 2_000_000


class MeshError(Exception):
    """A mesh could not be loaded or is unusable. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class LoadOptions:
    """How meshes are loaded and normalized."""

    up: str = "+y"
    """The axis of the source file that points up; it is rotated onto +Y."""
    max_faces: int = DEFAULT_MAX_FACES
    """Meshes with more triangles than this are refused (a guard against accidental huge inputs)."""


@dataclass
class LoadedMesh:
    """A validated mesh in the canonical frame.

    ``scene`` holds one geometry per material-homogeneous part, all with identity transforms (the node
    transforms of the source file are already applied), normalized into [-0.5, 0.5]^3 with +Y up.
    """

    path: str
    sha256: str
    scene: trimesh.Scene
    normalization: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def geometries(self) -> list[trimesh.Trimesh]:
        return list(self.scene.geometry.values())

    @property
    def n_faces(self) -> int:
        return int(sum(len(g.faces) for g in self.geometries))

    @property
    def n_vertices(self) -> int:
        return int(sum(len(g.vertices) for g in self.geometries))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def up_rotation(up: str) -> np.ndarray:
    """The 4x4 rotation taking the given source up axis onto +Y (right-handed, no mirroring)."""
    if up not in UP_AXES:
        raise ValueError(f"up axis must be one of {UP_AXES}, got {up!r}")
    rotations = {
        "+y": np.eye(4),
        "-y": trimesh.transformations.rotation_matrix(np.pi, [1, 0, 0]),
        "+z": trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]),
        "-z": trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]),
        "+x": trimesh.transformations.rotation_matrix(np.pi / 2, [0, 0, 1]),
        "-x": trimesh.transformations.rotation_matrix(-np.pi / 2, [0, 0, 1]),
    }
    return rotations[up]


class _WarningCollector(logging.Handler):
    """Collects trimesh's logged warnings while one file loads, so they end up on the LoadedMesh."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _obj_missing_resources(path: Path) -> list[str]:
    """Warnings for MTL libraries and texture maps an OBJ refers to that are not on disk."""
    warnings: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return warnings
    for match in re.finditer(r"^\s*mtllib\s+(.+?)\s*$", text, flags=re.MULTILINE):
        mtl_name = match.group(1)
        mtl_path = path.parent / mtl_name
        if not mtl_path.exists():
            warnings.append(f"MTL file {mtl_name!r} not found next to {path.name}; using a fallback colour")
            continue
        mtl_text = mtl_path.read_text(errors="replace")
        for tex in re.finditer(r"^\s*(map_\w+|bump|disp|decal|norm)\s+(.+?)\s*$", mtl_text, flags=re.MULTILINE):
            # the file name is the last token(s) after any options such as "-s 1 1 1"
            tokens = tex.group(2).split()
            candidates = [" ".join(tokens[i:]) for i in range(len(tokens))]
            if not any((mtl_path.parent / c).exists() for c in candidates):
                warnings.append(
                    f"texture {tokens[-1]!r} ({tex.group(1)}) named in {mtl_name} not found; "
                    + ("using the material's base colour" if tex.group(1) == "map_Kd" else "ignored")
                )
    return warnings


def _flatten(scene: trimesh.Scene, path: Path) -> tuple[list[trimesh.Trimesh], list[str]]:
    """Apply node transforms and return the triangle meshes (other geometry kinds are skipped, with a note)."""
    warnings: list[str] = []
    meshes: list[trimesh.Trimesh] = []
    for node_name in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node_name]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh):
            warnings.append(f"skipped non-triangle geometry {geom_name!r} ({type(geom).__name__})")
            continue
        part = geom.copy()
        part.apply_transform(transform)
        meshes.append(part)
    return meshes, warnings


def _validate(meshes: list[trimesh.Trimesh], path: Path, max_faces: int) -> None:
    n_faces = sum(len(m.faces) for m in meshes)
    if not meshes or n_faces == 0:
        raise MeshError(path, "no faces (the file holds no triangle geometry)")
    for m in meshes:
        if not np.all(np.isfinite(m.vertices)):
            raise MeshError(path, "non-finite vertex coordinates (NaN or inf)")
    if n_faces > max_faces:
        raise MeshError(path, f"{n_faces} faces, more than the limit of {max_faces}")


def normalize_meshes(meshes: list[trimesh.Trimesh], up: str = "+y") -> dict[str, Any]:
    """Rotate ``up`` onto +Y, centre on the bounding-box centre and scale the longest side to 1, in place.

    Returns the normalization record (written to every render folder's metadata):
    ``up``, ``rotation`` (4x4), ``center`` and ``scale`` such that canonical = (R @ p - center) * scale.
    """
    rotation = up_rotation(up)
    for m in meshes:
        m.apply_transform(rotation)
    bounds = np.array([m.bounds for m in meshes])
    lo, hi = bounds[:, 0].min(axis=0), bounds[:, 1].max(axis=0)
    center = (lo + hi) / 2.0
    extent = float((hi - lo).max())
    scale = 1.0 / extent if extent > 0 else 1.0
    for m in meshes:
        m.apply_translation(-center)
        m.apply_scale(scale)
    return {
        "up": up,
        "rotation": rotation.round(12).tolist(),
        "center": center.tolist(),
        "scale": scale,
        "source_extent": (hi - lo).tolist(),
    }


def load_mesh(
    path: str | Path,
    *,
    up: str | None = None,
    max_faces: int | None = None,
    options: LoadOptions | None = None,
) -> LoadedMesh:
    """Load, validate and normalize one mesh file. Raises :class:`MeshError` on any problem."""
    options = options or LoadOptions()
    up = up if up is not None else options.up
    max_faces = max_faces if max_faces is not None else options.max_faces
    path = Path(path)
    if not path.exists():
        raise MeshError(path, "file not found")
    if not path.is_file():
        raise MeshError(path, "not a regular file")
    file_type = SUPPORTED_FORMATS.get(path.suffix.lower())
    if file_type is None:
        raise MeshError(path, f"unknown format {path.suffix!r} (supported: {', '.join(SUPPORTED_FORMATS)})")
    if up not in UP_AXES:
        raise MeshError(path, f"invalid up axis {up!r} (one of {', '.join(UP_AXES)})")

    warnings = _obj_missing_resources(path) if file_type == "obj" else []
    collector = _WarningCollector()
    trimesh_logger = logging.getLogger("trimesh")
    trimesh_logger.addHandler(collector)
    try:
        loaded = trimesh.load(str(path), file_type=file_type, force="scene", process=False)
    except MeshError:
        raise
    except Exception as exc:  # trimesh raises many exception types for malformed files
        raise MeshError(path, f"cannot parse {file_type.upper()} file: {type(exc).__name__}: {exc}") from exc
    finally:
        trimesh_logger.removeHandler(collector)
    for msg in collector.messages:
        # trimesh repeats what _obj_missing_resources already reported in its own words; keep unique ones
        if msg not in warnings:
            warnings.append(msg)

    meshes, flatten_warnings = _flatten(loaded, path)
    warnings.extend(flatten_warnings)
    _validate(meshes, path, max_faces)
    normalization = normalize_meshes(meshes, up)

    scene = trimesh.Scene()
    for i, m in enumerate(meshes):
        scene.add_geometry(m, geom_name=f"part_{i:03d}")
    return LoadedMesh(
        path=str(path),
        sha256=sha256_file(path),
        scene=scene,
        normalization=normalization,
        warnings=warnings,
    )


def from_trimesh(obj: trimesh.Trimesh | trimesh.Scene, *, up: str = "+y", name: str = "<in-memory>") -> LoadedMesh:
    """Wrap an in-memory trimesh object (e.g. a policy's decoded sample) as a normalized LoadedMesh.

    The ``sha256`` is computed from the geometry (vertices and faces) since there are no file bytes.
    """
    scene = obj if isinstance(obj, trimesh.Scene) else trimesh.Scene(obj)
    meshes, warnings = _flatten(scene, Path(name))
    _validate(meshes, Path(name), DEFAULT_MAX_FACES)
    h = hashlib.sha256()
    for m in meshes:
        h.update(np.ascontiguousarray(m.vertices, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(m.faces, dtype=np.int64).tobytes())
    normalization = normalize_meshes(meshes, up)
    out = trimesh.Scene()
    for i, m in enumerate(meshes):
        out.add_geometry(m, geom_name=f"part_{i:03d}")
    return LoadedMesh(path=name, sha256=h.hexdigest(), scene=out, normalization=normalization, warnings=warnings)
