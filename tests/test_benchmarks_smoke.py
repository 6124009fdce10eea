"""Every script in benchmarks/ runs in a small smoke mode and gets to its last figure (issue 29, item 8).

Each case runs the script as a user would (``python benchmarks/<name>.py <small args>``, a subprocess, the
repository's rewardkit) and checks that it exits 0 and prints its last figure. The figures themselves are
not asserted: at these sizes they mean nothing; the full-size runs and their numbers are in docs/results.md.
bench_rl_vs_trl and bench_rl_gpu have their own smoke tests (tests/test_bench_rl_vs_trl.py,
tests/test_rl_bench_gpu.py), and so do gpu_check (tests/test_gpu_check.py) and bench_recipes, which needs a
run's labelled data (tests/test_pipeline.py, on the pipeline test's clone). A benchmark added later brings its own case here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MESHES = ROOT.parent / "shared" / "meshes"


def run_bench(name: str, *args: str, timeout: float = 600) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", "egl"))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def one_real_mesh(tmp_path: Path) -> Path:
    """A meshes folder in the shared layout (manifest.json, <id>/<file>) holding only the duck."""
    manifest = json.loads((SHARED_MESHES / "manifest.json").read_text())
    duck = [a for a in manifest if a["id"] == "duck"]
    folder = tmp_path / "meshes"
    folder.mkdir()
    (folder / "duck").symlink_to(SHARED_MESHES / "duck", target_is_directory=True)
    (folder / "manifest.json").write_text(json.dumps(duck))
    return folder


@pytest.mark.slow
def test_bench_scoring(tmp_path):
    out = run_bench("bench_scoring", "--n", 2, "--backbone", "rk-tiny", "--render-size", 32, "--camera", "orbit4",
                    "--batch-size", 2, "--cli-runs", 1, "--rounds", 1, "--json", tmp_path / "r.json")
    assert "speed-up of one process" in out and "score_meshes per mesh (sequential)" in out
    assert json.loads((tmp_path / "r.json").read_text())["cli_runs_timed"] == 1


@pytest.mark.slow
def test_bench_render(tmp_path):
    out = run_bench("bench_render", "--size", 32, "--meshes", one_real_mesh(tmp_path), "--naive-meshes", 1)
    assert "reused renderer vs new renderer per view (1 meshes" in out


@pytest.mark.slow
def test_bench_eval_gen():
    out = run_bench("bench_eval_gen", "--smoke")
    assert "render: 1 real meshes" in out and "features CLIP ViT-B-32" in out
    assert "metrics CLIP score over 480 views (measured)" in out


def test_bench_feature_cache():
    out = run_bench("bench_feature_cache", "--smoke")
    assert "key per item:" in out and "read a hit" in out and "peak memory encoding 4 items" in out


@pytest.mark.slow
def test_bench_train():
    out = run_bench("bench_train", "--only", "tiny", "--steps", 2, "--batch-size", 2, "--views", 2, "--threads", 1)
    assert out.count("\ntrain rk-tiny") >= 1 and '"train": [' in out.splitlines()[-1]


@pytest.mark.slow
def test_bench_rl_memory():
    out = run_bench("bench_rl_memory", "--no-validate")
    assert "GB" in out


@pytest.mark.slow
def test_bench_rl():
    out = run_bench("bench_rl", "--steps", 2)
    assert json.loads(out[out.index("{"):])["two_step_samples_per_s"] > 0


@pytest.mark.slow
def test_bench_transfer(tmp_path):
    from helpers.scoring import scorer_set_dir

    out = run_bench("bench_transfer", "--scorer", f"tiny={scorer_set_dir()}", "--meshes", one_real_mesh(tmp_path),
                    "--out", tmp_path / "out", "--json")
    result = json.loads(out.splitlines()[-1])
    assert result["scorers"]["tiny"]["scored"] >= 2
    # the global stage reads geometry renders only, which texture changes leave pixel-identical; the tiny
    # random scorer's float32 forward of identical inputs at other rows of one CLI batch can still differ by
    # one ulp (9.5e-7 measured here). The demo's exported scorers give exactly 0.0 (reports/metrics.json).
    assert result["scorers"]["tiny"]["global"]["max_abs_shift_under_texture_changes"] <= 1e-5


def _policy_samples(folder: Path) -> Path:
    """A policy-samples folder as rewardkit.rl.candidates writes it (candidates.csv with the mesh kind and
    PLY voxel surfaces): two prompts, three jittered samples each."""
    import numpy as np

    from rewardkit.demo.shapes import demo_shape, jitter
    from rewardkit.rl.tokenizers.base import occupancy_to_mesh

    rng = np.random.default_rng(0)
    (folder / "m").mkdir(parents=True)
    lines = ["mesh_path,prompt,prompt_id,item_id,mesh"]
    for shape in ("cube", "arch"):
        target = demo_shape(shape).occupancy(8)
        for k in range(3):
            occupancy_to_mesh(jitter(target, rng, max_shift=1, p_dilate=0.5)).export(folder / "m" / f"{shape}{k}.ply")
            lines.append(f"m/{shape}{k}.ply,{demo_shape(shape).prompt},{shape},{shape}{k},coarse")
    (folder / "candidates.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow
def test_bench_loop_round(tmp_path):
    from helpers.scoring import scorer_set_dir

    scorers = scorer_set_dir()
    out = run_bench("bench_loop_round", "--samples", _policy_samples(tmp_path / "samples"), "--before", scorers,
                    "--after", scorers)
    result = json.loads(out)
    assert result["items"] == 6 and result["global"]["before"] == result["global"]["after"]


def _demo_data(root: Path) -> Path:
    """A tiny demo data folder as the generate and render stages write it (items.parquet with render
    folders, candidates/candidates.parquet)."""
    import polars as pl

    from rewardkit.data.tables import write_table
    from rewardkit.demo import DemoConfig, generate
    from rewardkit.render import render_batch

    data = root / "data"
    items, _ = generate(DemoConfig(prompts_per_category=3, holdout_per_category=1, categories=("chair", "mug"),
                                   design="factorial"), data / "candidates")
    summary = render_batch(items["mesh_path"].to_list(), data / "renders", "30:20,150:20", ("geometry",), size=32,
                           names=items["item_id"].to_list(), progress=False)
    assert not summary.failed, summary.failed
    items = items.with_columns((pl.lit(str(data / "renders") + "/") + pl.col("item_id")).alias("render_dir"))
    write_table(items, data / "items.parquet", "items")
    return data


@pytest.mark.slow
def test_bench_label_efficiency(tmp_path):
    data = _demo_data(tmp_path)
    out = run_bench("bench_label_efficiency", "--data", data, "--stage", "global", "--start", 4, "--k", 4,
                    "--max-labels", 8, "--members", 1, "--epochs", 2, "--seeds", 0, "--csv", tmp_path / "le.csv",
                    "--plot", tmp_path / "le.png")
    assert "held-out accuracy" in out and (tmp_path / "le.png").stat().st_size > 1000
    assert json.loads((tmp_path / "le.json").read_text())["random_final_labels"] == 8
