"""Shared pytest fixtures. Keep additions additive: several areas of the suite put fixtures here."""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
