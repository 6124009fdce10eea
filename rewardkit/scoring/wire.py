"""The scorer service's wire format, shared by the server and the client (neither imports the other).

- views: ``{mode: [base64 PNG (or JPEG), ...]}`` per sample, lossless PNG from the client
  (:func:`encode_views`, :func:`encode_png`); the server reads each image's size from its header before
  decoding a pixel (:func:`image_header`) and decodes into a preallocated tensor (:func:`decode_into`);
- meshes: a multipart upload of the file's bytes (:func:`mesh_upload`; trimesh objects are exported to GLB).

Decoding errors are :class:`~rewardkit.scoring.errors.RequestError` with the HTTP status the service answers.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewardkit.scoring.errors import RequestError


# ---------------------------------------------------------------------------------------------------- #
# images (decoding runs in the service's decoder threads, never on its event loop)
# ---------------------------------------------------------------------------------------------------- #
def image_header(data: Any, limits: Any, where: str) -> tuple[bytes, int, int]:
    """A base64 PNG/JPEG -> (raw bytes, width, height), from the header only (no pixel is decoded)."""
    import PIL.Image

    if not isinstance(data, str):
        raise RequestError(422, f"{where}: expected a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{where}: not valid base64 ({exc})") from exc
    try:
        with PIL.Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"]) as img:
            w, h = img.size
    except Exception as exc:
        raise RequestError(400, f"{where}: not a PNG or JPEG image ({type(exc).__name__})") from exc
    if max(w, h) > limits.max_image_side:
        raise RequestError(413, f"{where}: image is {w}x{h}, larger than the limit of {limits.max_image_side} px "
                                "a side (max_image_side)")
    return raw, w, h


def decode_into(raw: bytes, out: torch.Tensor, where: str) -> None:
    """Decode one image into ``out`` (uint8 [3, H, W]) without an intermediate stack."""
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"]) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # read-only view of PIL's buffer
    except Exception as exc:
        raise RequestError(400, f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    if arr.shape != (out.shape[1], out.shape[2], 3):
        raise RequestError(400, f"{where}: decoded to {arr.shape[1]}x{arr.shape[0]}, not the size in its header")
    out.permute(1, 2, 0).numpy()[...] = arr


def decode_image(data: str, limits: Any, where: str) -> np.ndarray:
    """A base64 PNG (or JPEG) -> HxWx3 uint8. Size is checked from the header before decoding pixels."""
    raw, w, h = image_header(data, limits, where)
    out = torch.empty((3, h, w), dtype=torch.uint8)
    decode_into(raw, out, where)
    return out.permute(1, 2, 0).numpy()


def encode_png(image: np.ndarray) -> str:
    """HxWx3 uint8 -> base64 PNG string (the client side of :func:`decode_image`)."""
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _to_images(views: Any) -> list[np.ndarray]:
    """One sample's views of one mode -> list of HxWx3 uint8 arrays."""
    try:
        import torch

        if isinstance(views, torch.Tensor):
            views = views.detach().cpu()
            if views.dim() == 3:
                views = views.unsqueeze(0)
            if views.dtype != torch.uint8:
                views = (views.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
            return [v.permute(1, 2, 0).numpy() for v in views]
    except ImportError:  # pragma: no cover
        pass
    out = []
    for v in views:
        if isinstance(v, (bytes, bytearray)):
            import PIL.Image

            v = np.asarray(PIL.Image.open(io.BytesIO(v)).convert("RGB"))
        elif hasattr(v, "convert"):  # PIL image
            v = np.asarray(v.convert("RGB"))
        arr = np.asarray(v)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255.0).round().astype(np.uint8)
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
            arr = arr.transpose(1, 2, 0)
        out.append(arr)
    return out


def encode_views(views: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{mode: views}`` -> ``{mode: [base64 PNG]}`` (the /score wire format)."""
    return {str(m): [encode_png(im) for im in _to_images(v)] for m, v in views.items()}


def mesh_upload(mesh: Any) -> tuple[str, bytes]:
    """A mesh (path, bytes of a GLB, or a trimesh object) -> (file name, bytes) for ``/score_mesh``."""
    if isinstance(mesh, (str, os.PathLike)):
        path = Path(mesh)
        return path.name, path.read_bytes()
    if isinstance(mesh, (bytes, bytearray)):
        return "mesh.glb", bytes(mesh)
    return "mesh.glb", mesh.export(file_type="glb")  # trimesh.Trimesh / Scene


__all__ = ["decode_image", "decode_into", "encode_png", "encode_views", "image_header", "mesh_upload"]
