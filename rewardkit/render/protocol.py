"""Camera protocols: named, versioned multi-view camera presets.

A protocol is recorded in the metadata of every render folder, so a reward model trained on one protocol
can refuse (or at least flag) views rendered with another. Presets:

- ``orbit6`` (default): azimuths 0, 60, ..., 300 deg at 20 deg elevation
- ``orbit4``: azimuths 0, 90, 180, 270 deg at 20 deg elevation
- ``orbit8``: azimuths 0, 45, ..., 315 deg at 20 deg elevation
- ``toys4k24``: the 24 views of the Toys4K ground-truth renders that AR3D-R1's evaluation compares against
  (a spiral from -62 to +79 deg elevation, radius 2, FoV 40 deg), read off the released ``transforms.json``
  (3DGen-R1 ``example/<sha256>/transforms.json``; Blender, +Z up) and written in this frame: elevation as
  given, azimuth = Blender's atan2(y, x) + 90 deg, which is the same camera once the Z-up source is loaded
  with ``up="+z"`` (rewardkit.io maps Blender (x, y, z) to (x, z, -y)).

all with radius 2.0, vertical field of view 40 deg, 512x512 pixels, looking at the origin of the
canonical frame (mesh normalized into [-0.5, 0.5]^3, +Y up). Azimuth 0 looks at the object from +Z
(the glTF "front"), azimuth 90 from +X.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np

from rewardkit import config as _config

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class CameraProtocol:
    """A fixed set of views. ``azimuths`` and ``elevations`` are in degrees, one entry per view."""

    name: str
    azimuths: tuple[float, ...]  # degrees; 0 looks from +Z (the glTF front), 90 from +X
    elevations: tuple[float, ...]  # degrees above the XZ plane
    radius: float = 2.0  # camera distance from the origin, in the canonical frame's units (object in [-0.5, 0.5]^3)
    yfov_deg: float = 40.0  # vertical field of view, degrees
    size: int = 512  # square image side, pixels
    znear: float = 0.05  # clipping planes, same units as radius
    zfar: float = 10.0
    version: int = PROTOCOL_VERSION  # the version of the protocol definitions, recorded with every render

    def __post_init__(self) -> None:
        if len(self.azimuths) != len(self.elevations):
            raise ValueError("azimuths and elevations must have the same length")
        if not self.azimuths:
            raise ValueError("a camera protocol needs at least one view")
        if self.size <= 0 or self.radius <= 0 or not (0 < self.yfov_deg < 180):
            raise ValueError(f"invalid protocol geometry: size={self.size} radius={self.radius} fov={self.yfov_deg}")
        if not all(-90 < e < 90 for e in self.elevations):
            raise ValueError("elevations must lie strictly between -90 and 90 degrees")

    @property
    def n_views(self) -> int:
        return len(self.azimuths)

    def with_size(self, size: int | None) -> "CameraProtocol":
        return self if size is None or size == self.size else replace(self, size=int(size))

    def camera_poses(self) -> list[np.ndarray]:
        """4x4 camera-to-world matrices (OpenGL convention: the camera looks down its -Z axis, +Y up)."""
        return [look_at_pose(a, e, self.radius) for a, e in zip(self.azimuths, self.elevations)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["azimuths"] = list(self.azimuths)
        d["elevations"] = list(self.elevations)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CameraProtocol":
        """A protocol from plain data (``to_dict``'s output), strictly typed (:func:`rewardkit.config.from_dict`)."""
        return _config.from_dict(cls, d)


def look_at_pose(azimuth_deg: float, elevation_deg: float, radius: float) -> np.ndarray:
    """Camera-to-world pose on a sphere around the origin, looking at the origin with +Y up."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = np.array([radius * math.cos(el) * math.sin(az), radius * math.sin(el), radius * math.cos(el) * math.cos(az)])
    forward = -eye / np.linalg.norm(eye)  # camera looks along -z_cam == forward
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, -forward, eye
    return pose


def _orbit(name: str, n: int, elevation: float = 20.0) -> CameraProtocol:
    return CameraProtocol(name=name, azimuths=tuple(360.0 * i / n for i in range(n)), elevations=(elevation,) * n)


# (elevation, azimuth) per frame 000..023 of the Toys4K GT renders (see the module docstring)
_TOYS4K24_ELEVATIONS = (
    -62.16, -45.856, -33.43, -22.597, -12.567, -2.919, 2.211, 5.402, 8.609, 11.844, 15.118, 18.443,
    21.834, 25.307, 28.883, 32.587, 36.451, 40.518, 44.85, 49.535, 54.722, 60.682, 68.044, 79.428,
)
_TOYS4K24_AZIMUTHS = (
    -53.263, 126.737, 36.737, -143.263, -8.263, 171.737, 81.737, -98.263, -30.763, 149.237, 59.237, -120.763,
    14.237, -165.763, 104.237, -75.763, -42.013, 137.987, 47.987, -132.013, 2.987, -177.013, 92.987, -87.013,
)

PRESETS: dict[str, CameraProtocol] = {p.name: p for p in (
    _orbit("orbit6", 6), _orbit("orbit4", 4), _orbit("orbit8", 8),
    CameraProtocol(name="toys4k24", azimuths=_TOYS4K24_AZIMUTHS, elevations=_TOYS4K24_ELEVATIONS),
)}


def get_protocol(
    spec: "str | CameraProtocol | Sequence[tuple[float, float]]" = "orbit6", *, size: int | None = None
) -> CameraProtocol:
    """A protocol from a preset name, an explicit list of (azimuth, elevation) pairs, or a string
    ``"az:el,az:el,..."`` (e.g. ``"0:20,90:20,180:-10"``). ``size`` overrides the image size."""
    if isinstance(spec, CameraProtocol):
        return spec.with_size(size)
    if isinstance(spec, str):
        if spec in PRESETS:
            return PRESETS[spec].with_size(size)
        if ":" in spec:
            try:
                views = [tuple(float(x) for x in item.split(":")) for item in spec.split(",") if item.strip()]
            except ValueError as exc:
                raise ValueError(f"cannot parse camera list {spec!r}: expected 'az:el,az:el,...'") from exc
            if any(len(v) != 2 for v in views):
                raise ValueError(f"cannot parse camera list {spec!r}: expected 'az:el,az:el,...'")
            spec = views  # type: ignore[assignment]
        else:
            raise ValueError(f"unknown camera protocol {spec!r}; presets: {', '.join(PRESETS)} or 'az:el,az:el,...'")
    views = list(spec)  # type: ignore[arg-type]
    proto = CameraProtocol(
        name="explicit",
        azimuths=tuple(float(a) for a, _ in views),
        elevations=tuple(float(e) for _, e in views),
    )
    return proto.with_size(size)
