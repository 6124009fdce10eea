"""Progress on long work goes to stderr (a bar on a terminal, plain lines in a log), never into stdout:
`rewardkit train` prints one line per epoch with the validation figures, `rewardkit score --json` keeps
stdout one JSON document, and the Hi-GRPO trainer's step lines are printed once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip  # noqa: F401 - torch's compiler stack (triton) must load before this process makes a GL context
import pytest
import yaml

from helpers.models import make_preference_dataset
from helpers.scoring import mesh_files, scorer_set_dir  # torch/open_clip imported before any GL context

ROOT = Path(__file__).resolve().parents[1]
RK = str(Path(sys.executable).with_name("rewardkit"))  # the console script of this environment
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", "egl"),
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:OpenGL")


def _rk(*args, cwd=None, timeout=300):
    return subprocess.run([RK, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd or ROOT,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_train_in_a_log_prints_one_line_per_epoch_with_validation_figures(tmp_path):
    data = make_preference_dataset(tmp_path / "data", n_prompts=16, size=32, modes=("geometry",))
    cfg = {"items": str(data["items"]), "pairs": str(data["pairs"]), "preferences": str(data["preferences"]),
           "model": {"backbone": {"name": "rk-tiny", "image_size": 32}}, "image_size": 32, "batch_size": 32,
           "max_epochs": 3, "val_fraction": 0.25, "num_threads": 1, "tensorboard": False, "export": False,
           "out_dir": str(tmp_path / "out")}  # progress_bar: the default (auto)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    proc = _rk("train", "--config", tmp_path / "train.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3, proc.stderr[-3000:]
    for n, line in enumerate(lines, 1):
        assert re.fullmatch(rf"epoch {n}/3: train loss [\d.]+, val loss [\d.]+, val pairwise accuracy [\d.]+, "
                            r"[\d.]+ s \(step \d+\)", line), line
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr  # no bar frames in a log
    assert not any(line.startswith("epoch ") for line in proc.stdout.splitlines())  # progress is not the result
    assert "stage global" in proc.stdout
    # and the figures are the ones the run logged: the last line's val accuracy is the final epoch's
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["epochs"] == 3


@pytest.mark.slow
def test_score_json_stays_pure_json_with_progress_on_stderr(tmp_path):
    files = mesh_files()
    rows = ["mesh,prompt"] + [f"{files[name]},a {name} {i}" for i in range(6) for name in ("red_box", "cone")]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    proc = _rk("score", "--pairs-file", tmp_path / "pairs.csv", "--scorer", scorer_set_dir(), "--json",
               "--batch-size", "4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert len(doc["results"]) == 12 and all(r["scores"] for r in doc["results"])
    progress = [line for line in proc.stderr.splitlines() if line.startswith("score ")]
    assert progress and progress[-1].startswith("score 12/12 (100%)"), proc.stderr
    assert len(progress) <= 11  # a line every ~10 %, not one per frame
    assert "\r" not in proc.stderr


def test_render_progress_goes_to_stderr_as_lines(tmp_path):
    files = mesh_files()
    proc = _rk("render", files["red_box"], files["cone"], "--out", tmp_path / "r", "--protocol", "0:20", "--size",
               "32", "--modes", "rgb")
    assert proc.returncode == 0, proc.stderr
    assert "render 2/2 (100%)" in proc.stderr and "render 2/2" not in proc.stdout
    assert proc.stdout.startswith("rendered 2 of 2 meshes")


RL_CONFIG = {
    "tokens_per_object": 8, "shape_tokenizer": {"type": "voxel_blocks", "resolution": 4, "block": 2},
    "prompts": ["a cube", "a ball"], "sampling": {"max_reasoning_tokens": 3},
    "rewards_global": [{"builtin": "occupancy_iou"}], "rewards_local": [{"builtin": "surface_f1"}],
    "group_size": 4, "prompts_per_step": 1, "lr": 0.001, "steps": 3, "save_every": 0,
    "eval_group_size": 0, "render": False, "accelerator": "cpu", "num_threads": 1,
    "warm_start": {"enabled": True, "shapes": ["cube", "sphere"], "steps": 5, "hidden_size": 32, "num_layers": 1},
}


def _step_lines(text: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"step (\d+)  global", text)]


@pytest.mark.slow
def test_rl_cli_prints_each_step_once(tmp_path):
    cfg = dict(RL_CONFIG, policy_path=str(tmp_path / "init"), output_dir=str(tmp_path / "run"))
    (tmp_path / "rl.json").write_text(json.dumps(cfg))
    proc = _rk("rl", "--config", tmp_path / "rl.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _step_lines(proc.stderr) == ["step 1  global", "step 2  global", "step 3  global"], proc.stderr
    assert not _step_lines(proc.stdout)
    assert json.loads(proc.stdout)["steps"] == 3  # stdout: the summary only


@pytest.mark.slow
def test_rl_stage_prints_each_step_once_after_open_clip_logged_to_root(tmp_path):
    """The pipeline's rl stage logs steps to stdout; open_clip's root-logger warning (a scorer reward
    builds a backbone) used to add a second handler, so every step printed twice."""
    cfg = dict(RL_CONFIG, policy_path=str(tmp_path / "init"), output_dir=str(tmp_path / "run"))
    script = textwrap.dedent(f"""
        import json
        from pipelines.rl import progress_to_stdout
        from rewardkit.models.backbone import BackboneConfig, create_backbone
        from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

        progress_to_stdout()
        create_backbone(BackboneConfig(name="rk-tiny"))  # open_clip logs on the root logger (as scorer rewards do)
        HiGRPOTrainer(HiGRPOConfig.from_dict(json.loads({json.dumps(json.dumps(cfg))}))).train(resume=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _step_lines(proc.stdout + proc.stderr) == ["step 1  global", "step 2  global", "step 3  global"], (
        proc.stdout + proc.stderr)
