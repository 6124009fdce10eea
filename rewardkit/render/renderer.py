"""Offscreen multi-view rendering with pyrender on EGL.

One :class:`Renderer` owns one OpenGL context and reuses it across views and meshes (creating a context
per view is the common slow pattern; ``benchmarks/bench_render.py`` measures the difference). Modes:

- ``rgb``      textured and lit: texture images, base colours and vertex colours of the source file
- ``geometry`` the same surfaces in uniform grey, shaded by the same lights; texture is ignored. This is
               what the global-structure reward sees, so a texture change cannot change these pixels.
- ``normal``   world-space surface normals encoded as RGB ((n + 1) / 2), unlit
- ``mask``     coverage (255 where the object is, 0 elsewhere)

Lights are attached to the camera (a key and a fill light plus ambient), so every view of every mesh is
lit the same way. Output is deterministic for the same mesh, protocol and machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
import PIL.Image
import trimesh

from rewardkit.errors import RewardkitError
from rewardkit.io import LoadedMesh, from_trimesh, load_mesh
from rewardkit.render.protocol import CameraProtocol, get_protocol

MODES = ("rgb", "geometry", "normal", "mask")


class RenderError(RewardkitError, RuntimeError):
    """The renderer could not produce images (e.g. no EGL device)."""


@dataclass
class RenderConfig:
    """Appearance settings shared by all views. Part of a render folder's metadata."""

    background: tuple[int, int, int] = (255, 255, 255)
    """Background colour (0-255 RGB) for every mode but ``mask``."""
    fallback_color: tuple[int, int, int] = (180, 180, 180)
    """Surface colour in ``rgb`` for parts without any colour or whose texture is missing."""
    geometry_color: tuple[int, int, int] = (190, 190, 190)
    """The uniform surface colour of ``geometry`` renders."""
    smooth: bool = True
    """Smooth (vertex-normal) shading; False gives flat per-face shading."""
    crease_angle_deg: float = 35.0
    """With smooth shading, edges whose faces meet at more than this angle stay sharp."""
    ambient: float = 0.35
    key_light: float = 2.6
    fill_light: float = 1.0

    def to_dict(self) -> dict:
        return {
            "background": list(self.background),
            "fallback_color": list(self.fallback_color),
            "geometry_color": list(self.geometry_color),
            "smooth": self.smooth,
            "crease_angle_deg": self.crease_angle_deg,
            "ambient": self.ambient,
            "key_light": self.key_light,
            "fill_light": self.fill_light,
            "normal_space": "world",
        }


def _rgba01(color: Sequence[float]) -> list[float]:
    c = [float(x) for x in color]
    if max(c) > 1.0:
        c = [x / 255.0 for x in c]
    return (c + [1.0])[:4] if len(c) == 3 else c[:4]


def _texture_image(material) -> "PIL.Image.Image | None":
    image = getattr(material, "baseColorTexture", None)
    if image is None:
        image = getattr(material, "image", None)
    if image is None:
        return None
    if not isinstance(image, PIL.Image.Image):
        image = PIL.Image.fromarray(np.asarray(image))
    return image.convert("RGBA") if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else image.convert("RGB")


def _base_color(material, fallback: Sequence[int]) -> list[float]:
    factor = getattr(material, "baseColorFactor", None)
    if factor is None:
        factor = getattr(material, "diffuse", None)
    if factor is None:
        return _rgba01(fallback)
    rgba = _rgba01(np.asarray(factor, dtype=float).ravel().tolist())
    return rgba[:3] + [1.0]


class _Part:
    """One geometry's per-corner arrays, prepared once and turned into pyrender primitives for each mode.

    Corners are not shared between faces, so each corner gets its own normal: the smooth vertex normal
    where it is within ``crease_angle_deg`` of the face normal, else the face normal (hard edges stay
    hard, as on a box, while curved surfaces are smooth).
    """

    def __init__(self, geom: trimesh.Trimesh, smooth: bool, crease_angle_deg: float) -> None:
        faces = geom.faces
        self.geom = geom
        self.positions = geom.vertices[faces].reshape(-1, 3).astype(np.float32)
        face_normals = np.repeat(geom.face_normals, 3, axis=0)
        if smooth:
            vertex_normals = geom.vertex_normals[faces].reshape(-1, 3)
            keep = (vertex_normals * face_normals).sum(axis=1) >= np.cos(np.deg2rad(crease_angle_deg))
            normals = np.where(keep[:, None], vertex_normals, face_normals)
        else:
            normals = face_normals
        self.normals = normals.astype(np.float32)
        self.indices = None

    def _per_corner(self, per_vertex: np.ndarray) -> np.ndarray:
        return per_vertex[self.geom.faces].reshape(-1, per_vertex.shape[-1])

    def rgb_primitive(self, pyrender, config: RenderConfig):
        visual = self.geom.visual
        color_0 = texcoord_0 = None
        base = _rgba01(config.fallback_color)
        texture = None
        if isinstance(visual, trimesh.visual.TextureVisuals):
            material = visual.material
            if material is not None:
                base = _base_color(material, config.fallback_color)
                image = _texture_image(material)
                if image is not None and visual.uv is not None and len(visual.uv) == len(self.geom.vertices):
                    texture = image
                    texcoord_0 = self._per_corner(np.asarray(visual.uv, dtype=np.float32))
        elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.defined:
            if visual.kind == "face":
                color_0 = np.repeat(visual.face_colors, 3, axis=0)
            else:
                color_0 = self._per_corner(visual.vertex_colors)
            base = [1.0, 1.0, 1.0, 1.0]
        material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=base,
            baseColorTexture=texture,
            metallicFactor=0.0,
            roughnessFactor=0.8,
            alphaMode="OPAQUE",
            doubleSided=True,
        )
        return pyrender.Primitive(
            positions=self.positions, normals=self.normals, texcoord_0=texcoord_0, color_0=color_0,
            indices=self.indices, material=material,
        )

    def geometry_primitive(self, pyrender, config: RenderConfig):
        material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=_rgba01(config.geometry_color), metallicFactor=0.0, roughnessFactor=0.8,
            alphaMode="OPAQUE", doubleSided=True,
        )
        return pyrender.Primitive(positions=self.positions, normals=self.normals, indices=self.indices, material=material)

    def normal_primitive(self, pyrender):
        colors = np.clip((self.normals + 1.0) * 0.5, 0.0, 1.0)
        colors = np.concatenate([colors, np.ones((len(colors), 1), dtype=np.float32)], axis=1)
        material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=[1.0, 1.0, 1.0, 1.0], alphaMode="OPAQUE", doubleSided=True
        )
        return pyrender.Primitive(
            positions=self.positions, normals=self.normals, color_0=colors, indices=self.indices, material=material
        )


class Renderer:
    """A reusable offscreen renderer. Use as a context manager, or call :meth:`close`.

    >>> with Renderer() as r:
    ...     views = r.render("chair.glb", "orbit6", modes=("rgb", "geometry"))
    """

    def __init__(self, size: int = 512, config: RenderConfig | None = None) -> None:
        try:
            import pyrender
        except Exception as exc:  # pragma: no cover - import-time GL failures depend on the machine
            raise RenderError(f"cannot import pyrender with PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')}: {exc}") from exc
        self._pyrender = pyrender
        self.config = config or RenderConfig()
        self.size = int(size)
        try:
            self._offscreen = pyrender.OffscreenRenderer(self.size, self.size)
        except Exception as exc:
            raise RenderError(
                f"cannot create an offscreen OpenGL context (PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')}): {exc}. "
                "On Debian/Ubuntu install libegl1 libgl1-mesa-dri libegl-mesa0 (CPU) or use the NVIDIA EGL driver."
            ) from exc
        self.render_seconds = 0.0
        """Total wall time spent inside pyrender's render calls (for overhead measurements)."""

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Free this renderer's GL resources and context, leaving other renderers in the process working.

        (pyrender's own ``delete`` calls ``eglTerminate`` on the process-wide EGL display, which breaks
        every other live context; this releases only our own context.)
        """
        off, self._offscreen = self._offscreen, None
        if off is None:
            return
        platform = off._platform
        platform.make_current()
        off._renderer.delete()
        display = getattr(platform, "_egl_display", None)
        context = getattr(platform, "_egl_context", None)
        if display is not None and context is not None:
            from OpenGL import EGL

            EGL.eglMakeCurrent(display, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)
            EGL.eglDestroyContext(display, context)
            platform._egl_context = None
            platform._egl_display = None
        else:  # other platforms (osmesa, pyglet) own their display
            platform.delete_context()
        off._renderer = None
        off._platform = None

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ensure_size(self, size: int) -> None:
        if size != self.size:
            self._offscreen.viewport_width = size
            self._offscreen.viewport_height = size
            self.size = size

    # -- rendering -------------------------------------------------------------------------------
    def render(
        self,
        mesh: "str | os.PathLike | LoadedMesh | trimesh.Trimesh | trimesh.Scene",
        protocol: "str | CameraProtocol" = "orbit6",
        modes: Iterable[str] = ("rgb", "geometry", "normal"),
    ) -> dict[str, list[np.ndarray]]:
        """Render every view of ``protocol`` in every mode.

        Returns ``{mode: [view images]}``; images are HxWx3 uint8 (``mask``: HxW uint8, 0 or 255).
        """
        modes = tuple(modes)
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown render modes {unknown}; available: {', '.join(MODES)}")
        if not isinstance(mesh, LoadedMesh):
            mesh = from_trimesh(mesh) if isinstance(mesh, (trimesh.Trimesh, trimesh.Scene)) else load_mesh(mesh)
        protocol = get_protocol(protocol)
        self._ensure_size(protocol.size)
        pr = self._pyrender
        cfg = self.config

        parts = [_Part(g, cfg.smooth, cfg.crease_angle_deg) for g in mesh.geometries]
        lit_meshes: dict[str, object] = {}
        if "rgb" in modes:
            lit_meshes["rgb"] = pr.Mesh([p.rgb_primitive(pr, cfg) for p in parts])
        if "geometry" in modes or ("mask" in modes and "rgb" not in modes):
            lit_meshes["geometry"] = pr.Mesh([p.geometry_primitive(pr, cfg) for p in parts])
        normal_mesh = pr.Mesh([p.normal_primitive(pr) for p in parts]) if "normal" in modes else None

        bg = _rgba01(cfg.background)
        scene = pr.Scene(bg_color=bg, ambient_light=[cfg.ambient] * 3)
        nodes = {k: scene.add(m) for k, m in lit_meshes.items()}
        if normal_mesh is not None:
            nodes["normal"] = scene.add(normal_mesh)
        camera = pr.PerspectiveCamera(yfov=np.deg2rad(protocol.yfov_deg), znear=protocol.znear, zfar=protocol.zfar, aspectRatio=1.0)
        cam_node = scene.add(camera, pose=np.eye(4))
        key = scene.add(pr.DirectionalLight(color=np.ones(3), intensity=cfg.key_light), pose=np.eye(4))
        fill = scene.add(pr.DirectionalLight(color=np.ones(3), intensity=cfg.fill_light), pose=np.eye(4))
        # key light from above-left of the camera, fill from below-right, both fixed relative to the camera
        key_offset = _rotation_about([1, 0, 0], -30) @ _rotation_about([0, 1, 0], -25)
        fill_offset = _rotation_about([1, 0, 0], 20) @ _rotation_about([0, 1, 0], 35)

        out: dict[str, list[np.ndarray]] = {m: [] for m in modes}
        # render pass name -> (visible node, flags)
        passes: list[tuple[str, str, int]] = []
        for name in ("rgb", "geometry"):
            if name in nodes:
                passes.append((name, name, pr.RenderFlags.NONE))
        if "normal" in nodes:
            passes.append(("normal", "normal", pr.RenderFlags.FLAT))
        mask_source = "geometry" if "geometry" in nodes else "rgb"

        for pose in protocol.camera_poses():
            scene.set_pose(cam_node, pose)
            scene.set_pose(key, pose @ key_offset)
            scene.set_pose(fill, pose @ fill_offset)
            for pass_name, visible, flags in passes:
                for node_name, node in nodes.items():
                    node.mesh.is_visible = node_name == visible
                color, depth = self._render(scene, flags)
                if pass_name in modes:
                    out[pass_name].append(color)
                if "mask" in modes and pass_name == mask_source:
                    out["mask"].append(np.where(depth > 0, 255, 0).astype(np.uint8))
        return out

    def _render(self, scene, flags: int) -> tuple[np.ndarray, np.ndarray]:
        import time

        t0 = time.perf_counter()
        color, depth = self._offscreen.render(scene, flags=flags)
        self.render_seconds += time.perf_counter() - t0
        return np.ascontiguousarray(color[..., :3]), depth


def _rotation_about(axis: Sequence[float], degrees: float) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(np.deg2rad(degrees), axis)
