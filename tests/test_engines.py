"""Batch engines (issue 27): manifests (parquet / CSV / JSONL, path rules), the local engine, and the Ray
engine on a real Ray (``ray.init(num_cpus=2)`` and a two-node ``ray.cluster_utils.Cluster``): the Ray
path's render folders are byte-identical to ``render_batch``'s, its scores equal ``score_meshes``'
within 1e-5, a bad item fails alone, and a re-run skips the finished items."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from helpers.blocked import blocked_env
from helpers.scoring import CAMERA, RENDER_SIZE, scorer_set_dir

ROOT = Path(__file__).resolve().parents[1]
MODES = ("rgb", "geometry")
N_MESHES = 8


def _meshes(root: Path, n: int = N_MESHES) -> list[str]:
    """``n`` small coloured meshes (boxes, spheres, cones) under ``root/m/``, a broken GLB and a CSV/JSONL manifest."""
    (root / "m").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        kind = ("box", "sphere", "cone")[i % 3]
        if kind == "box":
            m = trimesh.creation.box(extents=rng.uniform(0.3, 1.0, 3))
        elif kind == "sphere":
            m = trimesh.creation.icosphere(subdivisions=1, radius=float(rng.uniform(0.3, 0.6)))
        else:
            m = trimesh.creation.cone(radius=0.4, height=float(rng.uniform(0.5, 1.0)), sections=12)
        m.visual.face_colors = np.array([*rng.integers(0, 255, 3), 255], dtype=np.uint8)
        name = f"m/{kind}{i}.glb"
        m.export(root / name)
        names.append(name)
    (root / "m" / "broken.glb").write_bytes(b"glTF not really")
    return names


def _write_manifest(root: Path, names: list[str], fmt: str = "csv", extra: list[dict] | None = None) -> Path:
    rows = [{"id": f"item{i}", "mesh": n, "prompt": f"a thing number {i}"} for i, n in enumerate(names)]
    rows += extra or []
    path = root / f"items.{fmt}"
    if fmt == "csv":
        import csv

        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", "mesh", "prompt"])
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


BAD_ROWS = [{"id": "broken", "mesh": "m/broken.glb", "prompt": "p"},
            {"id": "escape", "mesh": "../outside.glb", "prompt": "p"},
            {"id": "absolute", "mesh": "/etc/hostname", "prompt": "p"}]


# ------------------------------------------------------------------------------------------------------ #
# manifests
# ------------------------------------------------------------------------------------------------------ #
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats_resolve_paths_inside_the_folder(tmp_path, fmt):
    from rewardkit.engines import read_manifest

    names = _meshes(tmp_path, 3)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.glb"
    outside.write_bytes(b"x")
    os.symlink(outside, tmp_path / "m" / "link.glb")
    extra = [*BAD_ROWS, {"id": "link", "mesh": "m/link.glb", "prompt": "p"},
             {"id": "item0", "mesh": names[1], "prompt": "dup"},
             {"id": "../x", "mesh": names[2], "prompt": "p"},
             {"id": "noprompt", "mesh": names[2], "prompt": ""},
             {"id": "", "mesh": "m/sub/../box0.glb", "prompt": "default id"}]
    items = [it for chunk in read_manifest(_write_manifest(tmp_path, names, fmt, extra), need_prompt=True,
                                           chunk_rows=2) for it in chunk]
    assert [it.row for it in items] == list(range(1, len(items) + 1))
    good = [it for it in items if it.error is None]
    assert [it.id for it in good] == ["item0", "item1", "item2", "broken", "m__box0"]
    assert all(Path(it.mesh).is_absolute() and Path(it.mesh).is_relative_to(tmp_path.resolve()) for it in good)
    errors = {it.row: it.error for it in items if it.error}
    assert "outside the manifest's folder" in errors[5] and "absolute path" in errors[6]
    assert "outside the manifest's folder" in errors[7]  # a symlink out of the folder
    assert "duplicate id 'item0'" in errors[8] and "safe folder name" in errors[9] and "no prompt" in errors[10]
    assert 4 not in errors  # a broken mesh is a valid row: it fails when it is loaded


def test_manifest_that_cannot_be_read_is_one_line_exit_2(tmp_path):
    from click.testing import CliRunner

    from rewardkit.cli import main

    (tmp_path / "a.csv").write_text("path,prompt\nx.glb,p\n")
    (tmp_path / "b.txt").write_text("x")
    for name, needle in (("a.csv", "no 'mesh' column"), ("b.txt", "unknown manifest format"),
                         ("missing.csv", "no such manifest file")):
        res = CliRunner().invoke(main, ["render", "--manifest", str(tmp_path / name), "--out", str(tmp_path / "out")])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.stderr


@pytest.mark.slow
def test_ray_engine_without_ray_names_the_extra(tmp_path):
    names = _meshes(tmp_path, 1)
    manifest = _write_manifest(tmp_path, names)
    env = blocked_env(tmp_path, {"ray"})
    for cmd in (["render", "--out", str(tmp_path / "o")],
                ["score", "--out", str(tmp_path / "s.jsonl"), "--scorer", str(scorer_set_dir())]):
        p = subprocess.run([sys.executable, "-m", "rewardkit", *cmd, "--manifest", str(manifest), "--engine", "ray"],
                           capture_output=True, text=True, env=env, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "rewardkit[ray]" in lines[0], p.stderr


# ------------------------------------------------------------------------------------------------------ #
# the local engine
# ------------------------------------------------------------------------------------------------------ #
def _same_folders(a: Path, b: Path, ids) -> None:
    for i in ids:
        files = sorted(p.relative_to(a / i) for p in (a / i).rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(b / i) for p in (b / i).rglob("*") if p.is_file()), i
        for f in files:
            assert (a / i / f).read_bytes() == (b / i / f).read_bytes(), (i, f)


@pytest.mark.slow
def test_local_engine_renders_a_manifest_like_render_batch_and_skips_on_rerun(tmp_path):
    from rewardkit.engines import LocalEngine, render_manifest
    from rewardkit.render import render_batch

    names = _meshes(tmp_path, 3)
    manifest = _write_manifest(tmp_path, names, "jsonl", BAD_ROWS[:2])
    run = render_manifest(manifest, tmp_path / "out", LocalEngine(), protocol=CAMERA, size=RENDER_SIZE, modes=MODES,
                          progress=False)
    assert (run.total, run.done, run.failed, run.skipped) == (5, 3, 2, 0)
    render_batch([tmp_path / n for n in names], tmp_path / "ref", CAMERA, MODES, size=RENDER_SIZE,
                 names=[f"item{i}" for i in range(3)], progress=False)
    _same_folders(tmp_path / "ref", tmp_path / "out", [f"item{i}" for i in range(3)])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [f["id"] for f in summary["failed"]] == ["broken", "escape"]
    shutil.rmtree(tmp_path / "out" / "item1" / "rgb")  # half a folder: rendered again
    again = render_manifest(manifest, tmp_path / "out", LocalEngine(), protocol=CAMERA, size=RENDER_SIZE, modes=MODES,
                            progress=False)
    assert (again.done, again.failed, again.skipped) == (1, 2, 2)
    assert sorted(json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"]) == ["item0", "item2"]
    _same_folders(tmp_path / "ref", tmp_path / "out", ["item1"])


@pytest.mark.slow
def test_local_engine_scores_a_manifest_like_score_meshes_and_skips_on_rerun(tmp_path):
    from rewardkit.engines import LocalEngine, ScoreJob, read_results, score_manifest
    from rewardkit.scoring import score_meshes

    names = _meshes(tmp_path, 3)
    manifest = _write_manifest(tmp_path, names, "csv", BAD_ROWS[:1])
    out = tmp_path / "scores.jsonl"
    job = ScoreJob(scorers=(str(scorer_set_dir()),), device="cpu")
    run = score_manifest(manifest, out, LocalEngine(), job, progress=False)
    assert (run.done, run.failed) == (3, 1)
    ref = score_meshes([str(tmp_path / n) for n in names], [f"a thing number {i}" for i in range(3)],
                       str(scorer_set_dir()), device="cpu")
    got = read_results(out)
    for i, r in enumerate(ref):
        assert got[f"item{i}"]["scores"] == pytest.approx(r.scores, abs=1e-5)
    assert got["broken"]["error"]
    from click.testing import CliRunner

    from rewardkit.cli import main

    res = CliRunner().invoke(main, ["score", "--manifest", str(manifest), "--out", str(out), "--scorer",
                                    str(scorer_set_dir()), "--device", "cpu", "--no-progress"])  # the re-run
    assert res.exit_code == 1, res.output
    assert "scored 0 of 4 items (3 already done, 1 failed) on the local engine" in res.stdout
    assert "broken: " in res.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["item0", "item1", "item2", "broken"]
    assert read_results(out)["item1"]["scores"] == got["item1"]["scores"]


# ------------------------------------------------------------------------------------------------------ #
# the Ray engine, on a real Ray
# ------------------------------------------------------------------------------------------------------ #
def _ray_checks(tmp_path: Path, engine, n_nodes: int, rerun: bool) -> None:
    """Render and score a manifest on ``engine``: pixels, scores, per-row failures, nodes used (and, with
    ``rerun``, that a second run skips the finished items)."""
    from click.testing import CliRunner

    from rewardkit.cli import main
    from rewardkit.engines import ScoreJob, read_results, render_manifest, score_manifest
    from rewardkit.render import render_batch
    from rewardkit.scoring import score_meshes

    names = _meshes(tmp_path)
    manifest = _write_manifest(tmp_path, names, "parquet", BAD_ROWS)
    ids = [f"item{i}" for i in range(len(names))]
    run = render_manifest(manifest, tmp_path / "ray", engine, protocol=CAMERA, size=RENDER_SIZE, modes=MODES,
                          progress=False)
    assert (run.done, run.failed, run.skipped) == (len(names), 3, 0), run.records
    assert {r["id"] for r in run.records if r["status"] == "failed"} == {"broken", "escape", "absolute"}
    assert len(run.nodes()) == n_nodes, run.nodes()  # every node rendered
    render_batch([tmp_path / n for n in names], tmp_path / "ref", CAMERA, MODES, size=RENDER_SIZE, names=ids,
                 progress=False)
    _same_folders(tmp_path / "ref", tmp_path / "ray", ids)
    if rerun:  # through the command, on the Ray this test initialised; the broken mesh is tried again
        res = CliRunner().invoke(main, ["render", "--manifest", str(manifest), "--out", str(tmp_path / "ray"),
                                        "--engine", "ray", "--workers", "2", "--protocol", CAMERA, "--size",
                                        str(RENDER_SIZE), "--modes", ",".join(MODES)])
        assert res.exit_code == 1, res.output
        assert f"rendered 0 of {len(names) + 3} items ({len(names)} already done, 3 failed) on the ray engine" in res.stdout

    out = tmp_path / "scores.jsonl"
    job = ScoreJob(scorers=(str(scorer_set_dir()),), device="cpu", batch_size=2)
    run = score_manifest(manifest, out, engine, job, progress=False)
    assert (run.done, run.failed) == (len(names), 3)
    assert len(run.nodes()) == n_nodes, run.nodes()  # every node scored
    ref = score_meshes([str(tmp_path / n) for n in names], [f"a thing number {i}" for i in range(len(names))],
                       str(scorer_set_dir()), device="cpu")
    got = read_results(out)
    for i, r in enumerate(ref):
        assert set(got[ids[i]]["scores"]) == {"global", "local"}
        assert got[ids[i]]["scores"] == pytest.approx(r.scores, abs=1e-5), ids[i]
    assert "GLB" in got["broken"]["error"] and "outside" in got["escape"]["error"]
    if rerun:
        (tmp_path / "m" / "broken.glb").write_bytes((tmp_path / names[0]).read_bytes())  # fixed: scored now
        res = CliRunner().invoke(main, ["score", "--manifest", str(manifest), "--out", str(out), "--engine", "ray",
                                        "--workers", "2", "--scorer", str(scorer_set_dir()), "--device", "cpu",
                                        "--batch-size", "2"])
        assert res.exit_code == 1, res.output
        assert f"scored 1 of {len(names) + 3} items ({len(names)} already done, 2 failed) on the ray engine" in res.stdout
        fixed = read_results(out)["broken"]
        assert fixed["error"] is None and set(fixed["scores"]) == {"global", "local"}


@pytest.mark.slow
def test_ray_engine_on_a_local_ray(tmp_path):
    ray = pytest.importorskip("ray")
    from rewardkit.engines import RayEngine

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _ray_checks(tmp_path, RayEngine(actors=2, batch_size=2), n_nodes=1, rerun=True)
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_engine_on_a_two_node_cluster_uses_both_nodes(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from rewardkit.engines import RayEngine

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        _ray_checks(tmp_path, RayEngine(actors=2, batch_size=2), n_nodes=2, rerun=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
