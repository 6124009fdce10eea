"""An environment in which some top-level packages cannot be imported, as if not installed: a
``sitecustomize`` on ``PYTHONPATH`` (for child processes) whose meta-path finder refuses them."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def blocked_env(tmp_path: Path, packages: set[str] | frozenset[str]) -> dict[str, str]:
    """``os.environ`` plus a ``PYTHONPATH`` (this repository after the blocker) under which importing any of
    ``packages`` (top-level names) raises ModuleNotFoundError."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCKED = {set(packages)!r}\n"
        "class _Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Blocker())\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
