"""``rewardkit score`` and ``rewardkit serve`` command lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from helpers.scoring import mesh_files, scorer_set_dir

from rewardkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def test_score_prints_both_stage_scores_subprocess():
    """The issue's acceptance check, as a real process: both stage scores from an exported scorer set."""
    mesh = mesh_files()["red_box"]
    env = dict(os.environ, PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", "egl"))
    proc = subprocess.run([sys.executable, "-m", "rewardkit", "score", str(mesh), "--prompt", "a red chair",
                           "--scorer", str(scorer_set_dir())], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()[:2]
    assert header.split()[:3] == ["mesh", "global", "local"]
    cells = row.split()
    assert cells[0] == str(mesh)
    float(cells[1]), float(cells[2])
    assert "a red chair" in row


def test_score_json_verbose_and_unreadable_mesh():
    files = mesh_files()
    r = _run("score", files["red_box"], files["broken"], files["cone"], "--prompt", "a red chair",
             "--scorer", scorer_set_dir(), "--json", "--verbose")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    res = doc["results"]
    assert [x["error"] is None for x in res] == [True, False, True]
    assert "broken.glb" in res[1]["error"]
    assert set(res[0]["scores"]) == {"global", "local"} and len(res[0]["per_view"]["local"]) == 4
    assert set(doc["scorers"]) == {"global", "local"}
    assert "1 of 3 meshes could not be scored" in r.stderr


def test_score_table_verbose_per_view():
    r = _run("score", mesh_files()["cone"], "--prompt", "a cone", "--scorer", scorer_set_dir(), "-v")
    assert r.exit_code == 0, r.output
    assert "global per view:" in r.stdout and "local per view:" in r.stdout
    assert "# global: stage-model" in r.stdout


def test_pairs_file_and_separate_scorer_dirs(tmp_path):
    files = mesh_files()
    shutil.copy(files["red_box"], tmp_path / "a.glb")
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"mesh,prompt\na.glb,a red box\n{files['cone']},\"a cone, grey\"\n")
    d = scorer_set_dir()
    r = _run("score", "--pairs-file", csv, "--scorer", d / "global", "--scorer", d / "local", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert [x["prompt"] for x in res] == ["a red box", "a cone, grey"]
    assert res[0]["mesh"] == str(tmp_path / "a.glb") and set(res[0]["scores"]) == {"global", "local"}


def test_bad_scorer_dir_and_version_mismatch(tmp_path):
    mesh = mesh_files()["red_box"]
    r = _run("score", mesh, "--prompt", "x", "--scorer", tmp_path / "missing")
    assert r.exit_code == 2 and "scorer directory not found" in r.stderr
    (tmp_path / "notascorer").mkdir()
    r = _run("score", mesh, "--prompt", "x", "--scorer", tmp_path / "notascorer")
    assert r.exit_code == 2 and "no config.json" in r.stderr
    newer = tmp_path / "newer"
    shutil.copytree(scorer_set_dir() / "global", newer)
    cfg = json.loads((newer / "config.json").read_text())
    cfg["rewardkit_version"] = "7.0.0"
    (newer / "config.json").write_text(json.dumps(cfg))
    r = _run("score", mesh, "--prompt", "x", "--scorer", newer)
    assert r.exit_code == 2 and "written by rewardkit 7.0.0" in r.stderr and "upgrade" in r.stderr


def test_usage_errors(monkeypatch):
    monkeypatch.delenv("REWARDKIT_SCORER", raising=False)
    mesh = mesh_files()["red_box"]
    r = CliRunner().invoke(main, ["score", str(mesh), "--scorer", str(scorer_set_dir())])
    assert r.exit_code == 2 and "--prompt is required" in r.output
    r = CliRunner().invoke(main, ["score", str(mesh), "--prompt", "x"])
    assert r.exit_code == 2 and "no scorer" in r.output
    monkeypatch.setenv("REWARDKIT_SCORER", str(scorer_set_dir()))
    r = CliRunner().invoke(main, ["score", str(mesh), "--prompt", "x"])
    assert r.exit_code == 0, r.output


def test_serve_help_and_bad_dir(tmp_path):
    r = CliRunner().invoke(main, ["serve", "--help"])
    assert r.exit_code == 0 and "--scorer" in r.output and "--port" in r.output and "--host" in r.output
    r = CliRunner().invoke(main, ["serve", "--scorer", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "scorer directory not found" in r.output
