"""Render folders: the on-disk contract between rendering and everything downstream.

::

    <render_dir>/meta.json          protocol (name, version, cameras), mesh path + sha256, normalization,
                                    render config, modes, views, warnings, rewardkit version
    <render_dir>/<mode>/00.png ...  one PNG per view and mode (mode in rgb | geometry | normal | mask)
    <render_dir>/grid_<mode>.png    the views tiled into one image (2x3 for orbit6)

Nothing in a render folder depends on the time or the machine, so the same mesh and protocol give
byte-identical files (and DVC sees no change).

This module is also the one reader of view images, render folders or not: :func:`view_files` finds them
(a render folder by its ``meta.json``; else ``<folder>/<mode>/`` or the folder itself, images in name order, as
other tools write them, e.g. Toys4K's ``000.png ... 023.png``), :func:`open_view` decodes one and
:func:`load_views` does both.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import PIL.Image

from rewardkit import __version__
from rewardkit.errors import RewardkitError
from rewardkit.io import LoadedMesh, load_mesh
from rewardkit.render.grid import make_grid
from rewardkit.render.protocol import CameraProtocol, get_protocol
from rewardkit.render.renderer import MODES, Renderer

META_FILE = "meta.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""The view images :func:`view_files` reads from a folder that is not a render folder."""


class RenderFolderError(RewardkitError, FileNotFoundError):
    """A render folder is missing, incomplete or has no metadata."""


class ViewImageError(RewardkitError, ValueError):
    """A view image that cannot be read, or is larger than the pixel limit it is read under."""


@dataclass
class RenderResult:
    """One mesh rendered into a render folder: paths, the mesh's sha256, views, modes and warnings."""
    mesh_path: str
    render_dir: str
    mesh_sha256: str
    n_views: int
    modes: list[str]
    warnings: list[str] = field(default_factory=list)


_encoder_pool: ThreadPoolExecutor | None = None


def _encoders() -> ThreadPoolExecutor:
    """Threads for PNG encoding (zlib releases the GIL, so encoding runs in parallel with rendering)."""
    global _encoder_pool
    if _encoder_pool is None:
        _encoder_pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="rk-png")
    return _encoder_pool


def _save_png(image: "np.ndarray | PIL.Image.Image", path: Path, compress_level: int) -> None:
    image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(image)
    image.save(path, format="PNG", compress_level=compress_level)


def write_views(
    views: dict[str, list[np.ndarray]],
    out_dir: str | Path,
    *,
    mesh: LoadedMesh,
    protocol: CameraProtocol,
    render_config: dict,
    grid: bool = True,
    compress_level: int = 6,
) -> Path:
    """Write rendered views, their grids and ``meta.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[np.ndarray | PIL.Image.Image, Path]] = []
    for mode, images in views.items():
        (out_dir / mode).mkdir(exist_ok=True)
        jobs.extend((image, out_dir / mode / f"{i:02d}.png") for i, image in enumerate(images))
        if grid:
            background = tuple(render_config["background"]) if mode != "mask" else (0, 0, 0)
            jobs.append((make_grid(images, background=background), out_dir / f"grid_{mode}.png"))
    for future in [_encoders().submit(_save_png, image, path, compress_level) for image, path in jobs]:
        future.result()  # re-raises the first write error
    meta = {
        "rewardkit_version": __version__,
        "protocol": protocol.to_dict(),
        "mesh_path": mesh.path,
        "mesh_sha256": mesh.sha256,
        "normalization": mesh.normalization,
        "render_config": render_config,
        "modes": list(views),
        "views": [
            {"index": i, "azimuth": a, "elevation": e}
            for i, (a, e) in enumerate(zip(protocol.azimuths, protocol.elevations))
        ],
        "warnings": mesh.warnings,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir


def render_to_dir(
    mesh: "str | Path | LoadedMesh",
    out_dir: str | Path,
    protocol: "str | CameraProtocol" = "orbit6",
    modes: Iterable[str] = ("rgb", "geometry", "normal"),
    *,
    renderer: Renderer | None = None,
    size: int | None = None,
    up: str = "+y",
    grid: bool = True,
) -> RenderResult:
    """Load (if needed), render and write one mesh's render folder. Reuses ``renderer`` when given."""
    protocol = get_protocol(protocol, size=size)
    loaded = mesh if isinstance(mesh, LoadedMesh) else load_mesh(mesh, up=up)
    own = renderer is None
    renderer = renderer or Renderer(size=protocol.size)
    try:
        views = renderer.render(loaded, protocol, modes)
    finally:
        if own:
            renderer.close()
    write_views(views, out_dir, mesh=loaded, protocol=protocol, render_config=renderer.config.to_dict(), grid=grid)
    return RenderResult(
        mesh_path=loaded.path, render_dir=str(out_dir), mesh_sha256=loaded.sha256,
        n_views=protocol.n_views, modes=list(views), warnings=list(loaded.warnings),
    )


def read_meta(render_dir: str | Path) -> dict:
    """The metadata of a render folder."""
    path = Path(render_dir) / META_FILE
    if not path.exists():
        raise RenderFolderError(f"{render_dir}: not a render folder (no {META_FILE})")
    return json.loads(path.read_text())


def is_rendered(render_dir: str | Path, protocol: CameraProtocol, modes: Iterable[str], render_config: dict,
                mesh_sha256: str | None = None) -> bool:
    """Whether ``render_dir`` is a complete render folder of this protocol, these modes and this render
    config (``meta.json`` is written after every view, so it marks a finished folder), and with
    ``mesh_sha256`` of that mesh. A re-run of a batch skips such folders; any other state (absent,
    half-written, another protocol or mesh) is rendered again."""
    try:
        meta = read_meta(render_dir)
        modes = list(modes)
        as_json = lambda x: json.loads(json.dumps(x))  # noqa: E731 - tuples -> lists, as meta.json holds them
        if (meta.get("protocol") != as_json(protocol.to_dict()) or meta.get("render_config") != as_json(render_config)
                or not set(modes) <= set(meta.get("modes", []))
                or (mesh_sha256 is not None and meta.get("mesh_sha256") != mesh_sha256)):
            return False
        return all(p.is_file() for m in modes for p in view_paths(render_dir, m))
    except (RenderFolderError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def view_paths(render_dir: str | Path, mode: str) -> list[Path]:
    """Paths of the view PNGs of one mode of a render folder, in view order; error names what is missing."""
    render_dir = Path(render_dir)
    meta = read_meta(render_dir)
    if mode not in meta["modes"]:
        raise RenderFolderError(f"{render_dir}: mode {mode!r} was not rendered (has {meta['modes']})")
    paths = [render_dir / mode / f"{v['index']:02d}.png" for v in meta["views"]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise RenderFolderError(f"{render_dir}: missing view files {missing}")
    return paths


def view_files(folder: str | Path, mode: str, *, max_pixels: int | None = None) -> list[Path]:
    """The view images of ``mode`` in ``folder``, in view order: a render folder's (:func:`view_paths`, when
    ``folder`` has a ``meta.json``), else the images (:data:`IMAGE_SUFFIXES`) of ``<folder>/<mode>/`` if that
    folder exists, else those of ``folder`` itself unless it has a subfolder named after a mode (the grids
    of a half-written render folder are no views), in name order. With ``max_pixels`` each image's size is
    read from its header and checked before anything decodes it (:class:`ViewImageError`); a folder with no
    views raises :class:`RenderFolderError` naming where it looked."""
    folder = Path(folder)
    if (folder / META_FILE).is_file():
        paths = view_paths(folder, mode)
    else:
        sub = folder / mode
        layout = any((folder / m).is_dir() for m in MODES)  # a render folder's layout: its grids are no views
        src = sub if sub.is_dir() else folder if folder.is_dir() and not layout else None
        paths = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()) if src else []
        if not paths:
            raise RenderFolderError(f"{folder}: not a render folder (no {META_FILE}) and no {mode} views: no images "
                                    f"({', '.join(IMAGE_SUFFIXES)}) in {sub}" + ("" if layout else f" or {folder}"))
    if max_pixels is not None:
        for p in paths:
            try:
                with PIL.Image.open(p) as im:  # the header only
                    w, h = im.size
            except Exception as exc:
                raise ViewImageError(f"{p}: not a readable image: {exc}") from exc
            if w * h > max_pixels:
                raise ViewImageError(f"{p}: {w}x{h} pixels exceeds max_texture_pixels={max_pixels}")
    return paths


def open_view(path: str | Path, mode: str = "rgb", *, background: Sequence[int] | None = None) -> PIL.Image.Image:
    """One view image decoded: ``L`` for ``mode="mask"``, else RGB; with ``background`` an alpha channel is
    composited over it (without, it is dropped)."""
    with PIL.Image.open(path) as im:
        if mode == "mask":
            return im.convert("L")
        if background is not None and (im.mode in ("RGBA", "LA", "PA")
                                       or (im.mode == "P" and "transparency" in im.info)):
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
            a = rgba[..., 3:4] / 255.0
            out = rgba[..., :3] * a + np.asarray(background, np.float32) * (1.0 - a)
            return PIL.Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
        return im.convert("RGB")


def load_views(folder: str | Path, mode: str, *, background: Sequence[int] | None = None,
               max_pixels: int | None = None) -> list[PIL.Image.Image]:
    """The views of one mode (:func:`view_files`) decoded by :func:`open_view`, in view order."""
    return [open_view(p, mode, background=background) for p in view_files(folder, mode, max_pixels=max_pixels)]
