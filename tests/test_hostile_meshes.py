"""Issue 13 (mesh side): the hostile-mesh corpus of tests/helpers/hostile_meshes.py through the loader,
`rewardkit render`, `rewardkit score` and the live service. Every hostile file gets a named MeshError or
a warning, never reads outside its folder, never blocks, and never costs the batch its good meshes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import trimesh

from helpers.hostile_meshes import GOOD_MESHES, SECRET, build_corpus

from rewardkit.io import IsolatedLoader, MeshError, MeshLimits, load_mesh

ROOT = Path(__file__).resolve().parents[1]
SERVICE_RSS_BOUND = 2 * 1024**3  # bytes: the service's peak RSS through the whole corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, build_corpus(folder)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _no_leak(text: str, folder: Path) -> None:
    assert SECRET not in text and "hunter2" not in text
    assert "id_rsa" not in text and "no_such_key" not in text and "server.fifo" not in text
    assert str(folder / "server") not in text


def _outcome(load, case):
    try:
        m = load(case.path)
        return "warning", " | ".join(m.warnings)
    except MeshError as exc:
        return "error", exc.reason


def test_loader_corpus(corpus):
    folder, cases = corpus
    with IsolatedLoader() as loader:
        for case in cases:
            kind, text = _outcome(loader.load, case)
            assert kind == case.expect, f"{case.name}: expected {case.expect}, got {kind}: {text}"
            assert case.match in text, f"{case.name}: {text!r} lacks {case.match!r}"
            _no_leak(text, folder)
        for good in GOOD_MESHES:
            assert loader.load(good).n_faces > 0
        assert loader.restarts == 1  # no hostile file killed or hung the worker


def test_outside_paths_answer_the_same_whether_or_not_they_exist(corpus):
    _, cases = corpus
    by = {c.name: c for c in cases}
    a = load_mesh(by["mtllib_abs_existing"].path).warnings
    b = load_mesh(by["mtllib_abs_missing"].path).warnings
    assert a == b == ["mtllib path outside the mesh folder; not read (using a fallback colour)"]


def test_fifo_and_devices_never_block_even_in_process(corpus):
    _, cases = corpus
    limits = MeshLimits(isolate=False)
    names = ("mtllib_fifo", "mtllib_abs_fifo", "mtllib_dev_stdin", "mtllib_dev_zero", "mesh_is_fifo", "texture_outside")
    todo = [c for c in cases if c.name in names]
    done: list[str] = []

    def run() -> None:
        for c in todo:
            _outcome(lambda p: IsolatedLoader(limits).load(p), c)
            done.append(c.name)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert done == [c.name for c in todo], f"blocked after {done}"


def test_texture_limit_is_a_setting(corpus, tmp_path):
    _, cases = corpus
    by = {c.name: c for c in cases}
    with pytest.raises(MeshError, match="12000x12000"):
        load_mesh(by["texture_12k"].path)
    # raised limit: the 12000^2 texture is accepted (and decoded, in the isolated worker)
    with IsolatedLoader() as loader:
        m = loader.load(by["texture_12k"].path, limits=MeshLimits(max_texture_pixels=12000 * 12000))
        assert m.geometries[0].visual.material.baseColorTexture.size == (12000, 12000)
    assert MeshLimits.from_env({"REWARDKIT_MESH_MAX_TEXTURE_PIXELS": "100"}).max_texture_pixels == 100
    with pytest.raises(ValueError, match="REWARDKIT_MESH_MAX_FACES"):
        MeshLimits.from_env({"REWARDKIT_MESH_MAX_FACES": "lots"})


def _big_obj(tmp_path: Path, subdivisions: int) -> Path:
    p = tmp_path / f"sphere{subdivisions}.obj"
    if not p.exists():
        p.write_text(trimesh.exchange.obj.export_obj(trimesh.creation.icosphere(subdivisions=subdivisions),
                                                     include_normals=False))
    return p


@pytest.mark.slow
def test_per_mesh_time_and_memory_caps_stop_one_mesh_not_the_loader(tmp_path):
    big = _big_obj(tmp_path, 7)  # 327680 faces, ~20 MB of OBJ text
    with IsolatedLoader() as loader:
        assert loader.load(GOOD_MESHES[0]).n_faces > 0
        with pytest.raises(MeshError, match="longer than 0.05 s"):
            loader.load(big, limits=MeshLimits(load_timeout_s=0.05))
        assert loader.load(GOOD_MESHES[0]).n_faces > 0  # a fresh worker takes over
        # the worker's address space at rest, plus 60 MB: parsing 20 MB of OBJ text needs far more
        status = Path(f"/proc/{loader._proc.pid}/status").read_text()
        at_rest = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024
        with pytest.raises(MeshError, match="memory"):
            loader.load(big, limits=MeshLimits(max_memory_bytes=at_rest + 60 * 1024**2))
        assert loader.load(big).n_faces == 327680  # the default cap loads it


def test_obj_text_completions_reject_degenerate_meshes():
    from rewardkit.scoring.adapters import obj_text_to_mesh

    with pytest.raises(MeshError, match="zero extent"):
        obj_text_to_mesh("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n")
    with pytest.raises(MeshError, match="absurd"):
        obj_text_to_mesh("v 1.7e308 0 0\nv -1.7e308 0 0\nv 0 1 0\nf 1 2 3\n")
    assert len(obj_text_to_mesh("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n").faces) == 1


@pytest.mark.slow
def test_render_cli_renders_the_good_and_reports_the_bad(corpus, tmp_path):
    folder, cases = corpus
    paths = [str(c.path) for c in cases] + [str(p) for p in GOOD_MESHES]
    out = tmp_path / "renders"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "rewardkit", "render", *paths, "--out", str(out), "--size", "48",
                        "--protocol", "orbit4", "--modes", "rgb"], capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rendered = {Path(x["mesh_path"]).name: x for x in summary["rendered"]}
    failed = {Path(x["mesh_path"]).name: x["error"] for x in summary["failed"]}
    for good in GOOD_MESHES:
        assert good.name in rendered and (Path(rendered[good.name]["render_dir"]) / "rgb" / "00.png").exists()
    for c in cases:
        if c.expect == "error":
            assert c.match in failed[c.path.name], (c.name, failed.get(c.path.name))
            assert f"{c.path}: " in r.stderr  # each bad one is reported with its file
        else:
            assert c.path.name in rendered and any(c.match in w for w in rendered[c.path.name]["warnings"]), c.name
    _no_leak(r.stdout + r.stderr + json.dumps(summary), folder)
    print(f"render corpus: {len(paths)} meshes in {time.time() - t0:.1f} s")


@pytest.mark.slow
def test_score_cli_scores_the_good_and_reports_the_bad(corpus):
    from helpers.scoring import scorer_set_dir

    folder, cases = corpus
    paths = [str(c.path) for c in cases] + [str(p) for p in GOOD_MESHES]
    r = subprocess.run([sys.executable, "-m", "rewardkit", "score", *paths, "-p", "a thing", "--scorer",
                        str(scorer_set_dir()), "--device", "cpu", "--json"], capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    results = {Path(x["mesh"]).name: x for x in json.loads(r.stdout)["results"]}
    for good in GOOD_MESHES:
        assert results[good.name]["error"] is None and set(results[good.name]["scores"]) == {"global", "local"}
    for c in cases:
        res = results[c.path.name]
        if c.expect == "error":
            assert res["error"] and c.match in res["error"] and not res["scores"], (c.name, res)
            assert str(c.path) in r.stderr
        else:
            assert res["error"] is None and any(c.match in w for w in res["warnings"]), (c.name, res)
    _no_leak(r.stdout + r.stderr, folder)


def _vm_hwm(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


@pytest.mark.slow
def test_service_survives_the_corpus_with_bounded_memory(corpus):
    from helpers.scoring import scorer_set_dir

    folder, cases = corpus
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rewardkit", "serve", "--scorer", str(scorer_set_dir()),
                             "--port", str(port), "--device", "cpu", "--log-level", "warning"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(f"service did not start: {proc.stderr.read1(4000) if proc.stderr else ''}")
        at_start = _vm_hwm(proc.pid)
        t0 = time.time()
        answers: dict[str, httpx.Response] = {}
        with httpx.Client(timeout=180) as client:
            def upload(path: Path) -> httpx.Response:
                return client.post(url + "/score_mesh", files={"file": (path.name, path.read_bytes())},
                                   data={"prompt": "a thing"})

            for c in cases:
                if c.local:
                    continue
                r = answers[c.name] = upload(c.path)
                body = r.text
                _no_leak(body, folder)
                assert "rewardkit-upload-" not in body, body
                if c.expect == "error" and c.path.suffix in (".gltf", ".gz"):  # uploads must be self-contained
                    assert r.status_code == 415, (c.name, r.status_code, body)
                elif c.expect == "error":
                    assert r.status_code == 400 and c.match in r.json()["detail"], (c.name, r.status_code, body)
                else:
                    assert r.status_code == 200 and any(c.match in w for w in r.json()["warnings"]), (c.name, body)
                assert _vm_hwm(proc.pid) < SERVICE_RSS_BOUND, c.name
            a, b = answers["mtllib_abs_existing"].json(), answers["mtllib_abs_missing"].json()
            assert a["warnings"] == b["warnings"]
            for good in GOOD_MESHES:  # the render thread is free: good meshes still score
                r = upload(good)
                assert r.status_code == 200 and set(r.json()["scores"]) == {"global", "local"}, r.text
        elapsed = time.time() - t0
        peak = _vm_hwm(proc.pid)
        import psutil

        workers = [_vm_hwm(ch.pid) for ch in psutil.Process(proc.pid).children(recursive=True)]
        print(f"service corpus: {len(answers)} uploads + {len(GOOD_MESHES)} good in {elapsed:.1f} s, "
              f"service VmHWM {at_start / 2**20:.0f} MiB after start, {peak / 2**20:.0f} MiB after the corpus "
              f"(bound {SERVICE_RSS_BOUND / 2**20:.0f} MiB); loader worker VmHWM "
              f"{[round(w / 2**20) for w in workers]} MiB")
        assert peak < SERVICE_RSS_BOUND
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
