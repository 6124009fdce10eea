"""Which torch device (or Lightning accelerator) to run on, checked before any work starts.

``resolve_device("auto")`` is CUDA when torch sees a GPU, else the CPU; asking for a device the machine
does not have (``cuda`` without a GPU, ``cuda:3`` on a two-GPU machine, ``mps`` off Apple silicon) is a
one-line :class:`DeviceError`, not a traceback from deep inside torch.
"""

from __future__ import annotations

from typing import Any

from rewardkit.errors import RewardkitError


class DeviceError(RewardkitError, ValueError):
    """A requested device or accelerator that this machine does not have (or a malformed name)."""


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: Any = "auto", *, what: str = "device") -> str:
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` | ``"mps"`` (or a ``torch.device``) -> a device
    string that works here. ``what`` names the setting in error messages (e.g. ``"--device"``)."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return "cuda" if _cuda_count() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "gpu":
        text = "cuda"
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise DeviceError(f"{what} {spec!r}: expected cuda or cuda:N with N a GPU index")
        n = _cuda_count()
        if n == 0:
            raise DeviceError(f"{what} {spec!r}: CUDA requested but not available (torch sees no GPU); "
                              "use cpu or auto")
        if index and int(index) >= n:
            raise DeviceError(f"{what} {spec!r}: CUDA device {index} requested but this machine has {n} GPU(s)")
        return text
    if text == "mps":
        if not _mps_available():
            raise DeviceError(f"{what} {spec!r}: MPS (Apple GPU) requested but not available; use cpu or auto")
        return "mps"
    raise DeviceError(f"{what} {spec!r}: unknown device; use auto, cpu, cuda, cuda:N or mps")


def check_accelerator(accelerator: str, *, what: str = "accelerator") -> None:
    """Raise :class:`DeviceError` when a Lightning ``accelerator`` name asks for hardware this machine
    lacks (``gpu``/``cuda`` without CUDA, ``mps``, ``tpu`` without XLA). ``auto`` and ``cpu`` always pass."""
    name = str(accelerator).strip().lower()
    if name in ("auto", "cpu"):
        return
    if name in ("gpu", "cuda"):
        if not _cuda_count():
            raise DeviceError(f"{what} {accelerator!r}: CUDA requested but not available (torch sees no GPU); "
                              "use cpu or auto")
        return
    if name == "mps":
        resolve_device("mps", what=what)
        return
    if name == "tpu":
        try:
            from lightning.fabric.accelerators import XLAAccelerator

            ok = XLAAccelerator.is_available()
        except Exception:  # no XLA support at all
            ok = False
        if not ok:
            raise DeviceError(f"{what} {accelerator!r}: TPU requested but not available; use cpu or auto")


__all__ = ["DeviceError", "check_accelerator", "resolve_device"]
