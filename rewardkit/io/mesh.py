"""Loading the meshes people actually have, and putting them into rewardkit's canonical frame.

``load_mesh`` reads GLB/glTF, OBJ (+MTL + textures), PLY, STL and OFF through trimesh, flattens
multi-part scenes with their node transforms, keeps materials (texture images, base colours, vertex
colours), validates the result and normalizes it: centred on its bounding-box centre, longest side 1
(so it fits [-0.5, 0.5]^3), with the configured up axis rotated onto +Y.

Every failure is a :class:`MeshError` naming the file and the reason. Missing texture images and MTL
files are not failures: they become warnings on the returned :class:`LoadedMesh` and the renderer uses a
fallback colour.

Files may be hostile (see docs/security.md): everything is read through :mod:`rewardkit.io.resources`
under :class:`rewardkit.io.limits.MeshLimits` (regular files inside the mesh's folder only, sizes,
texture pixels and face counts checked before the cost is paid), and degenerate geometry (out-of-range
face indices, non-finite or absurd coordinates, zero extent) is a MeshError.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from rewardkit.errors import RewardkitError
from rewardkit.io.limits import DEFAULT_LIMITS, MeshLimits
from rewardkit.io import gltf_scan, resources

SUPPORTED_FORMATS: dict[str, str] = {
    ".glb": "glb",
    ".gltf": "gltf",
    ".obj": "obj",
    ".ply": "ply",
    ".stl": "stl",
    ".off": "off",
}

UP_AXES = ("+x", "-x", "+y", "-y", "+z", "-z")

DEFAULT_MAX_FACES = DEFAULT_LIMITS.max_faces


class MeshError(RewardkitError):
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
        faces = np.asarray(geom.faces)
        if faces.size and (int(faces.max()) >= len(geom.vertices) or int(faces.min()) < 0):
            raise MeshError(path, f"face indices out of range in {geom_name!r} (indices {int(faces.min())}.."
                                  f"{int(faces.max())} for {len(geom.vertices)} vertices)")
        if not np.all(np.isfinite(transform)):
            raise MeshError(path, f"non-finite node transform for {geom_name!r}")
        part = geom.copy()
        part.apply_transform(transform)
        meshes.append(part)
    return meshes, warnings


def _validate(meshes: list[trimesh.Trimesh], path: Path, max_faces: int, limits: MeshLimits = DEFAULT_LIMITS) -> None:
    n_faces = sum(len(m.faces) for m in meshes)
    if not meshes or n_faces == 0:
        raise MeshError(path, "no faces (the file holds no triangle geometry)")
    if n_faces > max_faces:
        raise MeshError(path, f"{n_faces} faces, more than the limit of {max_faces} (MeshLimits.max_faces)")
    n_vertices = sum(len(m.vertices) for m in meshes)
    if n_vertices > limits.max_vertices:
        raise MeshError(path, f"{n_vertices} vertices, more than the limit of {limits.max_vertices} "
                              "(MeshLimits.max_vertices)")
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for m in meshes:
        faces = np.asarray(m.faces)
        if int(faces.max()) >= len(m.vertices) or int(faces.min()) < 0:
            raise MeshError(path, f"face indices out of range (indices {int(faces.min())}..{int(faces.max())} "
                                  f"for {len(m.vertices)} vertices)")
        v = np.asarray(m.vertices, dtype=np.float64)[np.unique(faces)]
        if not np.all(np.isfinite(v)):
            raise MeshError(path, "non-finite vertex coordinates (NaN or inf)")
        lo, hi = np.minimum(lo, v.min(axis=0)), np.maximum(hi, v.max(axis=0))
    biggest = float(max(np.abs(lo).max(), np.abs(hi).max()))
    if biggest > limits.max_abs_coordinate:
        raise MeshError(path, f"absurd vertex coordinates (|x| up to {biggest:.3g}, more than "
                              f"{limits.max_abs_coordinate:.3g}, MeshLimits.max_abs_coordinate)")
    extent = float((hi - lo).max())
    if not extent > 0.0 or extent <= biggest * 1e-12:
        raise MeshError(path, "zero extent: every vertex is at the same point (a degenerate mesh)")


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
    if not (np.isfinite(scale) and np.all(np.isfinite(center)) and scale > 0):
        raise ValueError(f"cannot normalize: extent {extent!r}, centre {center.tolist()}")
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
    limits: MeshLimits | None = None,
) -> LoadedMesh:
    """Load, validate and normalize one mesh file. Raises :class:`MeshError` on any problem.

    ``limits`` (default :class:`MeshLimits` ()) bounds what reading the file and the files it names may
    cost; ``max_faces`` (or ``options.max_faces``) overrides ``limits.max_faces``. This runs in the calling
    process; :class:`rewardkit.io.isolate.IsolatedLoader` adds a time and memory cap per mesh.
    """
    options = options or LoadOptions()
    limits = limits or DEFAULT_LIMITS
    up = up if up is not None else options.up
    max_faces = max_faces if max_faces is not None else (
        options.max_faces if options.max_faces != DEFAULT_MAX_FACES else limits.max_faces)
    if max_faces != limits.max_faces:
        limits = limits.replace(max_faces=max_faces)
    path = Path(path)
    file_type = SUPPORTED_FORMATS.get(path.suffix.lower())
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MeshError(path, "file not found") from None
    except OSError as exc:
        raise MeshError(path, f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MeshError(path, "not a regular file")
    if st.st_size == 0:
        raise MeshError(path, "the file is empty")
    if file_type is None:
        raise MeshError(path, f"unknown format {path.suffix!r} (supported: {', '.join(SUPPORTED_FORMATS)})")
    if up not in UP_AXES:
        raise MeshError(path, f"invalid up axis {up!r} (one of {', '.join(UP_AXES)})")

    report = resources.ResourceReport()
    resolver = resources.SafeResolver(path, limits, report)
    try:
        data = resources.read_regular_file(path, limits.max_file_bytes, "the mesh file")
        report.total_bytes += len(data)
        if file_type == "obj":
            resources.scan_obj(data, resolver, report, limits)
        elif file_type in ("glb", "gltf"):
            gltf_scan.scan_gltf(data, file_type == "glb", resolver, report, limits)
        elif file_type == "off":
            resources.scan_off(data, path.name, report, limits)
        elif file_type == "ply":
            resources.scan_ply(data, path.name, report, limits)
        elif file_type == "stl":
            resources.scan_stl(data, limits)
    except resources.LimitExceeded as exc:
        raise MeshError(path, str(exc)) from None
    except ValueError as exc:
        raise MeshError(path, f"cannot parse {file_type.upper()} file: {exc}") from None
    except OSError as exc:
        raise MeshError(path, f"cannot read: {exc.strerror or exc}") from None
    if report.fatal:
        raise MeshError(path, report.fatal)
    warnings = list(report.warnings)

    collector = _WarningCollector()
    trimesh_logger = logging.getLogger("trimesh")
    trimesh_logger.addHandler(collector)
    try:
        stream = io.BytesIO(data)
        del data
        loaded = trimesh.load(stream, file_type=file_type, force="scene", process=False, resolver=resolver)
    except MeshError:
        raise
    except RecursionError:
        raise MeshError(path, f"cannot parse {file_type.upper()} file: nested too deeply") from None
    except IndexError as exc:  # trimesh's parsers index with the file's face indices
        raise MeshError(path, f"face indices out of range ({exc})") from None
    except MemoryError:
        raise MeshError(path, f"cannot parse {file_type.upper()} file: out of memory") from None
    except Exception as exc:  # trimesh raises many exception types for malformed files
        raise MeshError(path, f"cannot parse {file_type.upper()} file: {type(exc).__name__}: {exc}") from exc
    finally:
        trimesh_logger.removeHandler(collector)
    if report.fatal:
        raise MeshError(path, report.fatal)
    for msg in collector.messages:
        # trimesh repeats what the resource scan already reported in its own words; keep unique ones
        if msg not in warnings:
            warnings.append(msg)

    # textures are checked and decoded before _flatten copies the parts (a copy decodes every image)
    warnings.extend(_check_textures([g for g in loaded.geometry.values() if isinstance(g, trimesh.Trimesh)],
                                    path, limits))
    meshes, flatten_warnings = _flatten(loaded, path)
    warnings.extend(flatten_warnings)
    _validate(meshes, path, max_faces, limits)
    try:
        normalization = normalize_meshes(meshes, up)
    except ValueError as exc:
        raise MeshError(path, str(exc)) from None

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


def _check_textures(meshes: list[trimesh.Trimesh], path: Path, limits: MeshLimits) -> list[str]:
    """Every texture image attached to a part: its size (from the header) within the limit, then decoded
    here (so a broken image is a warning now, not a render failure later; the renderer then uses the
    material's base colour). Images the scan saw but trimesh dropped are warned about too."""
    warnings: list[str] = []
    seen: dict[int, bool] = {}
    n_images = 0
    for m in meshes:
        visual = m.visual
        if not isinstance(visual, trimesh.visual.TextureVisuals) or visual.material is None:
            continue
        material = visual.material
        for attr in ("baseColorTexture", "image"):
            image = getattr(material, attr, None)
            if image is None:
                continue
            key = id(image)
            if key not in seen:
                n_images += 1
                shown = (getattr(image, "info", {}) or {}).get("file_path") or f"image {n_images}"
                shown = Path(str(shown)).name
                try:
                    w, h = image.size
                    if w * h > limits.max_texture_pixels:
                        raise MeshError(path, f"texture {shown} is {w}x{h} ({w * h / 1e6:.1f} MP), more than the "
                                              f"limit of {limits.max_texture_pixels} pixels "
                                              "(MeshLimits.max_texture_pixels)")
                    if hasattr(image, "load"):
                        image.load()
                    seen[key] = True
                except MeshError:
                    raise
                except Exception as exc:
                    warnings.append(f"texture {shown} cannot be decoded ({type(exc).__name__}: {exc}); "
                                    "using the material's base colour")
                    seen[key] = False
            if not seen[key]:
                setattr(material, attr, None)
    return warnings


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
