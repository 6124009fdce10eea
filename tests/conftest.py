"""Shared pytest fixtures. Keep additions additive: several areas of the suite put fixtures here."""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

# Loading triton's LLVM after Mesa's software EGL has loaded its own (an EGL context exists) segfaults
# the process; torch._dynamo (pulled in by Lightning and open_clip) imports triton. Load it first, once,
# before any test renders, whatever order the tests run in.
try:
    import triton  # noqa: F401
except ImportError:  # a torch build without triton
    pass


# ---------------------------------------------------------------------------------------------------
# Label Studio (issue 4): ONE real server per test session, started through `rewardkit annotate up`
# and stopped through `rewardkit annotate down`; shared by tests/test_labelstudio_server.py and
# tests/test_labelstudio_browser.py. Candidates are rendered (rewardkit.render) while it boots.
# ---------------------------------------------------------------------------------------------------
import json as _ls_json
import subprocess as _ls_subprocess
import sys as _ls_sys
from dataclasses import dataclass as _ls_dataclass
from pathlib import Path as _LsPath

import pytest as _ls_pytest

_LS_ROOT = _LsPath(__file__).resolve().parents[1]
_LS_SHARED_MESHES = _LS_ROOT.parent / "shared" / "meshes"
# item_id -> (prompt_id, prompt, mesh inside shared/meshes)
LS_CANDIDATES = {
    "duck": ("animal", "a small toy animal", "duck/Duck.glb"),
    "bunny": ("animal", "a small toy animal", "bunny/bunny.ply"),
    "cow": ("animal", "a small toy animal", "spot_cow/cow.obj"),
    "monkey": ("object", "a grey monkey head", "suzanne/monkey.glb"),
    "teapot": ("object", "a grey monkey head", "teapot/teapot.obj"),
}


def ls_missing_reason(what: str) -> str | None:
    """None if ``what`` ("server" | "chromium") is available; else why not."""
    import shutil

    if what == "server":
        b = _LS_ROOT / ".venv-ls" / "bin" / "label-studio"
        ok = b.exists() or bool(shutil.which("label-studio"))
        return None if ok else f"Label Studio not installed ({b}); see .ci/run"
    if what == "chromium":
        ok = bool(shutil.which("chromium") or shutil.which("chromium-browser"))
        try:
            import playwright  # noqa: F401
        except ImportError:
            return "playwright not installed (pip install -e .[dev])"
        return None if ok else "chromium not installed (apt-get install -y chromium)"
    raise ValueError(what)


def ls_require(what: str) -> None:
    """Skip locally, fail in CI (CI=true), when the server / browser is missing."""
    import os

    reason = ls_missing_reason(what)
    if reason:
        if os.environ.get("CI"):
            _ls_pytest.fail(reason)
        _ls_pytest.skip(reason)


@_ls_dataclass
class LabelStudioEnv:
    url: str
    project_id: int
    username: str
    password: str
    token: str
    data_dir: _LsPath
    document_root: _LsPath
    renders: _LsPath
    credentials: _LsPath
    items: object  # polars DataFrame
    pairs: object
    up_log: _LsPath
    pid: int

    def cli_args(self) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--credentials", str(self.credentials)]


@_ls_pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A running Label Studio (temp data dir, free loopback port) with the rewardkit project, the renders
    folder registered as local-files storage, rendered candidates, an items and a pairs table."""
    import os

    import polars as pl

    ls_require("server")
    base = tmp_path_factory.mktemp("labelstudio")
    docroot, data_dir, creds = base / "docroot", base / "ls-data", base / "credentials.json"
    renders = docroot / "renders"
    renders.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env["REWARDKIT_LS_CREDENTIALS"] = str(creds)
    up_cmd = [_ls_sys.executable, "-m", "rewardkit", "annotate", "up", "--renders", str(renders),
              "--document-root", str(docroot), "--data-dir", str(data_dir), "--port", "0",
              "--annotators-per-task", "3", "--credentials", str(creds)]
    up_log = open(base / "up.log", "w")
    up = _ls_subprocess.Popen(up_cmd, stdout=up_log, stderr=_ls_subprocess.STDOUT, env=env, cwd=str(_LS_ROOT))

    def down() -> None:
        _ls_subprocess.run([_ls_sys.executable, "-m", "rewardkit", "annotate", "down", "--data-dir", str(data_dir)],
                           env=env, cwd=str(_LS_ROOT), capture_output=True, timeout=60)

    try:
        # render while the server boots
        from rewardkit.render import render_to_dir

        rows = []
        for item_id, (prompt_id, prompt, mesh) in LS_CANDIDATES.items():
            res = render_to_dir(_LS_SHARED_MESHES / mesh, renders / item_id, modes=("rgb", "geometry"), size=96)
            rows.append({"item_id": item_id, "prompt_id": prompt_id, "prompt": prompt, "mesh_path": res.mesh_path,
                         "mesh_sha256": res.mesh_sha256, "generator": "shared-meshes", "seed": 0,
                         "render_dir": str(renders / item_id)})
        from rewardkit.data import conform, sample_pairs

        items = conform(pl.DataFrame(rows), "items")
        pairs = sample_pairs(items, "all", seed=0)
        rc = up.wait(timeout=300)
        up_log.close()
        if rc != 0:
            raise RuntimeError(f"`rewardkit annotate up` failed ({rc}):\n{(base / 'up.log').read_text()[-4000:]}")
        state = _ls_json.loads((data_dir / "rewardkit-server.json").read_text())
        c = _ls_json.loads(creds.read_text())
        yield LabelStudioEnv(
            url=state["url"], project_id=int(state["project_id"]), username=c["username"], password=c["password"],
            token=c["token"], data_dir=data_dir, document_root=docroot, renders=renders, credentials=creds,
            items=items, pairs=pairs, up_log=base / "up.log", pid=int(state["pid"]),
        )
    finally:
        if up.poll() is None:
            up.kill()
        down()
