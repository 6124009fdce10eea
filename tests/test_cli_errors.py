"""A user's mistake is one line on stderr, ``rewardkit <cmd>: error: ...``, exit code 2, no traceback
(issue 12 item 5). One real ``rewardkit`` process per command; the other cases through click's runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rewardkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
RK = str(Path(sys.executable).with_name("rewardkit"))  # the console script of this environment
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", "egl"),
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
ENV.pop("LABEL_STUDIO_URL", None)
# a CUDA device this machine does not have
NO_GPU = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


def _one_line_error(stderr: str, cmd: str, *fragments: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"rewardkit {cmd}: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _rk(*args, cwd):
    proc = subprocess.run([RK, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stderr


def _cli(*args):
    r = CliRunner().invoke(main, list(map(str, args)))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.stderr


@pytest.fixture
def rl_config(tmp_path) -> Path:
    path = tmp_path / "rl.yaml"
    path.write_text(f"policy_path: {tmp_path / 'policy'}\nprompts: [a cube]\nsampling: {{temperature: 1.0}}\n"
                    "rewards_global: [{builtin: occupancy_iou}]\nrewards_local: [{builtin: surface_f1}]\n")
    return path


# --------------------------------------------------------------------------------------------------- #
# one real process per command
@pytest.mark.slow
def test_train_process_rejects_a_wrong_type(tmp_path):
    rc, err = _rk("train", "--set", "lr=abc", "--print-config", cwd=tmp_path)
    assert rc == 2
    _one_line_error(err, "train", "'lr'", "'abc'", "float")


def test_rl_process_rejects_an_unknown_nested_key(tmp_path, rl_config):
    rc, err = _rk("rl", "--config", rl_config, "--set", 'sampling={"temperatur":2}', cwd=tmp_path)
    assert rc == 2
    _one_line_error(err, "rl", "unknown config key 'sampling.temperatur'", "did you mean 'sampling.temperature'")


def test_score_process_without_the_requested_gpu(tmp_path):
    rc, err = _rk("score", tmp_path / "a.glb", "--prompt", "a chair", "--scorer", tmp_path, "--device", NO_GPU,
                  cwd=tmp_path)
    assert rc == 2
    _one_line_error(err, "score", "--device", "CUDA", "requested")


def test_serve_process_without_the_requested_gpu(tmp_path):
    rc, err = _rk("serve", "--scorer", tmp_path, "--device", NO_GPU, cwd=tmp_path)
    assert rc == 2
    _one_line_error(err, "serve", "--device", "CUDA", "requested")


def test_render_process_with_an_output_folder_it_cannot_create(tmp_path):
    (tmp_path / "file").write_text("x")
    rc, err = _rk("render", tmp_path / "a.glb", "--out", tmp_path / "file" / "renders", cwd=tmp_path)
    assert rc == 2
    _one_line_error(err, "render", "--out", "cannot create the output folder")


def test_annotate_process_without_a_server(tmp_path):
    rc, err = _rk("annotate", "status", cwd=tmp_path)
    assert rc == 2
    _one_line_error(err, "annotate status", "no Label Studio URL")


def test_demo_process_with_an_unreadable_table(tmp_path):
    (tmp_path / "pairs.parquet").write_text("not parquet")
    rc, err = _rk("demo", "label", "--pairs", tmp_path / "pairs.parquet", "--candidates", tmp_path / "pairs.parquet",
                  "--out", tmp_path / "prefs.parquet", cwd=tmp_path)
    assert rc == 2
    _one_line_error(err, "demo label", "pairs.parquet", "cannot read parquet")


# --------------------------------------------------------------------------------------------------- #
# the rest of issue 12's list (and neighbours) in-process
@pytest.mark.parametrize("override, fragments", [
    ("max_epochs=ten", ("'max_epochs'", "'ten'", "int")),
    ("accelerator=tpu2", ("'accelerator'", "'tpu2'", "'cpu'", "'gpu'", "'auto'")),
    ("lrr=1", ("unknown config key 'lrr'", "did you mean 'lr'")),
    ("model.backbone.nme=x", ("unknown config key 'model.backbone.nme'", "did you mean 'model.backbone.name'")),
    ("model.modes=[rgb]", ("must not see rgb",)),
])
def test_train_override_errors(override, fragments):
    rc, err = _cli("train", "--set", override, "--print-config")
    assert rc == 2
    _one_line_error(err, "train", *fragments)


def test_train_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nmodel: {backbone: [rk-tiny\nmax_epochs: 2\n")
    rc, err = _cli("train", "--config", bad)
    assert rc == 2
    _one_line_error(err, "train", f"{bad}:", "malformed YAML")
    rc, err = _cli("train", "--config", tmp_path / "missing.yaml")
    assert rc == 2
    _one_line_error(err, "train", "missing.yaml: config file not found")
    (tmp_path / "typo.yaml").write_text("max_epoch: 2\n")
    rc, err = _cli("train", "--config", tmp_path / "typo.yaml")
    assert rc == 2
    _one_line_error(err, "train", "unknown config key 'max_epoch'", "did you mean 'max_epochs'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_train_and_rl_on_a_gpu_accelerator_without_one(tmp_path, rl_config):
    rc, err = _cli("train", "--set", "accelerator=gpu", "--out", tmp_path / "o")
    assert rc == 2
    _one_line_error(err, "train", "CUDA requested but not available")
    rc, err = _cli("rl", "--config", rl_config, "--set", "accelerator=cuda")
    assert rc == 2
    _one_line_error(err, "rl", "CUDA requested but not available")


def test_rl_config_errors(tmp_path, rl_config):
    rc, err = _cli("rl", "--config", rl_config, "--set", "lrr=1")
    assert rc == 2
    _one_line_error(err, "rl", "unknown config key 'lrr'", "did you mean 'lr'")
    rc, err = _cli("rl", "--config", rl_config, "--set", "steps=many")
    assert rc == 2
    _one_line_error(err, "rl", "'steps'", "'many'", "int")
    rc, err = _cli("rl", "--config", tmp_path / "missing.yaml")
    assert rc == 2
    _one_line_error(err, "rl", "missing.yaml: config file not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": 1,}')
    rc, err = _cli("rl", "--config", bad)
    assert rc == 2
    _one_line_error(err, "rl", f"{bad}:1: malformed JSON")
    rc, err = _cli("rl", "--config", rl_config, "--set", f"prompts_file={tmp_path / 'none.txt'}")
    assert rc == 2
    _one_line_error(err, "rl", "none.txt")
    rc, err = _cli("rl", "--config", rl_config, "--set", "rewards_local=[]")
    assert rc == 2
    _one_line_error(err, "rl", "rewards_local: a step needs at least one reward term")
    rc, err = _cli("rl", "--config", rl_config, "--set", "rewards_global=[{builtin: nope}]")
    assert rc == 2
    _one_line_error(err, "rl", "config key 'rewards_global[0].builtin': 'nope' is not one of 'occupancy_iou'")
    rc, err = _cli("rl", "--config", rl_config, "--set", "rewards_high=[{builtin: surface_f1}]")
    assert rc == 2
    _one_line_error(err, "rl", "config key 'rewards_high' was renamed: use 'rewards_global'")
    rc, err = _cli("rl", "--config", rl_config)  # no policy there and warm_start off
    assert rc == 2
    _one_line_error(err, "rl", "holds no Hugging Face model")


def test_rl_dotted_override_reaches_the_nested_config(tmp_path, rl_config):
    from rewardkit.rl.trainer import load_config

    cfg = load_config(rl_config, ["sampling.temperature=2", "warm_start.steps=3", "lr=1e-5"])
    assert (cfg.sampling.temperature, cfg.warm_start.steps, cfg.lr) == (2.0, 3, 1e-5)


def test_score_device_unknown_name(tmp_path):
    rc, err = _cli("score", tmp_path / "a.glb", "--prompt", "x", "--scorer", tmp_path, "--device", "tpu")
    assert rc == 2
    _one_line_error(err, "score", "--device 'tpu'", "unknown device")


def test_resolve_device():
    from rewardkit.devices import DeviceError, resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="CUDA"):
        resolve_device(NO_GPU)
    with pytest.raises(DeviceError, match="expected cuda or cuda:N"):
        resolve_device("cuda:x")
    assert json.dumps(resolve_device(None)) in ('"cpu"', '"cuda"')
