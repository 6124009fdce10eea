"""Meshes built in the tests: trimesh primitives, one textured through UVs and an image, in every format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import trimesh

SHARED_MESHES = Path(__file__).resolve().parents[2].parent / "shared" / "meshes"


def checker_image(size: int = 64, colors=((220, 30, 30), (30, 30, 220)), squares: int = 4) -> PIL.Image.Image:
    idx = (np.indices((size, size)) // (size // squares)).sum(axis=0) % 2
    arr = np.array(colors, dtype=np.uint8)[idx]
    return PIL.Image.fromarray(arr, "RGB")


def textured_box(image: PIL.Image.Image | None = None, extents=(1.0, 0.6, 0.4)) -> trimesh.Trimesh:
    """A box whose faces carry planar UVs into ``image`` (a checkerboard by default)."""
    box = trimesh.creation.box(extents=extents)
    box = trimesh.Trimesh(box.vertices[box.faces].reshape(-1, 3), np.arange(len(box.faces) * 3).reshape(-1, 3), process=False)
    normal = np.repeat(box.face_normals, 3, axis=0)
    v = box.vertices / np.max(extents) + 0.5
    # project each corner onto the two axes orthogonal to its face normal
    axis = np.abs(normal).argmax(axis=1)
    uv = np.where(axis[:, None] == 0, v[:, [1, 2]], np.where(axis[:, None] == 1, v[:, [0, 2]], v[:, [0, 1]]))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image or checker_image(), baseColorFactor=[255, 255, 255, 255])
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return box


def vertex_colored_sphere() -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    colors = np.zeros((len(sphere.vertices), 4), dtype=np.uint8)
    colors[:, 0] = (255 * (sphere.vertices[:, 1] + 0.5)).clip(0, 255)
    colors[:, 1] = 120
    colors[:, 3] = 255
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=colors)
    return sphere


def write_obj_with_texture(mesh: trimesh.Trimesh, path: Path) -> Path:
    """Write OBJ + MTL + texture PNG next to each other (what exporters of generators produce)."""
    text, files = trimesh.exchange.obj.export_obj(mesh, include_texture=True, return_texture=True, mtl_name=path.stem + ".mtl")
    path.write_text(text)
    for name, data in files.items():
        (path.parent / name).write_bytes(data)
    return path


def write_all_formats(mesh: trimesh.Trimesh, folder: Path, stem: str = "mesh") -> dict[str, Path]:
    """The same mesh as GLB, glTF, OBJ(+MTL+PNG), PLY, STL and OFF."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["glb"] = folder / f"{stem}.glb"
    mesh.export(out["glb"])
    gltf_files = trimesh.Scene(mesh).export(file_type="gltf")
    for name, data in gltf_files.items():
        (folder / (f"{stem}.gltf" if name == "model.gltf" else name)).write_bytes(data)
    out["gltf"] = folder / f"{stem}.gltf"
    out["obj"] = write_obj_with_texture(mesh, folder / f"{stem}.obj")
    for ext in ("ply", "stl", "off"):
        out[ext] = folder / f"{stem}.{ext}"
        mesh.export(out[ext])
    return out


def manifest() -> list[dict]:
    return json.loads((SHARED_MESHES / "manifest.json").read_text())
