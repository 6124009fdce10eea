"""Reward-model training across processes (DDP on CPU, gloo): two ranks launched by Lightning from
``rewardkit train``, and two torchrun invocations rendezvousing over loopback as two "nodes".

Each run is observed from outside: a ``sitecustomize`` on the children's PYTHONPATH installs a Python audit
hook that records, per process, every file opened for writing under the run folder and when the process
exits, with its rank from the launcher's environment. The library knows nothing about it. The checks: the
run's outputs were written by rank 0 alone and once, rank 1 exited only after rank 0 had exported (it
waited), and the exported model loads and scores meshes like the model rank 0 evaluated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from rewardkit.annotation.server import find_free_port
from rewardkit.eval.metrics import preference_metrics
from rewardkit.models import StageRewardModel
from rewardkit.train import PreferenceDataModule, predict_deltas

from helpers.models import _noisy, _primitive, make_preference_dataset

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:OpenGL")]

# A tiny model on few pairs: the point is the process layout, not the accuracy.
CONFIG = {
    "stage": "global", "model": {"backbone": {"name": "rk-tiny", "image_size": 32}}, "image_size": 32,
    "batch_size": 16, "lr": 2e-3, "val_fraction": 0.25, "num_threads": 1, "max_epochs": 4,
    "progress_bar": "lines", "tensorboard": False, "log_every_n_steps": 2, "accelerator": "cpu",
}

AUDIT_HOOK = r'''
import json, os, sys, time

_DIR, _LOG = os.environ.get("RK_AUDIT_DIR"), os.environ.get("RK_AUDIT_LOG")
if _DIR and _LOG:
    _busy = [False]

    def _note(kind, path=""):
        _busy[0] = True
        try:
            rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK")
            line = json.dumps({"kind": kind, "path": path, "pid": os.getpid(), "rank": rank, "t": time.time()})
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        finally:
            _busy[0] = False

    def _hook(event, args):
        if _busy[0]:
            return
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
        elif event in ("os.rename", "os.replace"):
            path, writing = args[1], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            p = os.path.abspath(os.fsdecode(path))
            if p.startswith(_DIR):
                _note("write", os.path.relpath(p, _DIR))

    sys.addaudithook(_hook)
    import atexit
    atexit.register(lambda: _note("exit"))
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    return make_preference_dataset(tmp_path_factory.mktemp("rk-ddp-data"), n_prompts=24, size=48)


def _write_config(dataset, tmp_path: Path) -> Path:
    d = dict(CONFIG, items=str(dataset["items"]), pairs=str(dataset["pairs"]), preferences=str(dataset["preferences"]))
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _env(tmp_path: Path, out: Path) -> dict[str, str]:
    hook = tmp_path / "audit"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)]), RK_AUDIT_DIR=str(out) + os.sep,
               RK_AUDIT_LOG=str(tmp_path / "audit.jsonl"), OMP_NUM_THREADS="1", PYOPENGL_PLATFORM="egl",
               GLOO_SOCKET_IFNAME="lo")
    return env


def _events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def _check_run(dataset, tmp_path: Path, out: Path, world_size: int) -> None:
    """Rank 0 alone wrote the run's outputs, each once; rank 1 waited for the export; the model scores."""
    events = _events(tmp_path)
    writes = [e for e in events if e["kind"] == "write"]
    assert writes, events
    assert {e["rank"] for e in writes} == {"0"}, sorted({(e["rank"], e["path"]) for e in writes})
    assert len({e["pid"] for e in writes}) == 1  # one process wrote everything
    for name in ("train_config.json", "metrics.json", "learning_curve.png", "model/config.json"):
        assert sum(e["path"] == name for e in writes) == 1, (name, [e for e in writes if e["path"] == name])
    exported_at = max(e["t"] for e in writes if e["path"] == "model/config.json")
    rank1_exits = [e for e in events if e["kind"] == "exit" and e["rank"] == "1"]
    assert len(rank1_exits) == 1, events  # rank 1 ran, as one process, and ended normally
    assert rank1_exits[0]["t"] >= exported_at  # it waited for rank 0's export

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == world_size and metrics["weights"] == "best"
    assert metrics["val"]["pairwise_accuracy"] >= 0.75, metrics["val"]
    # the exported model is the one rank 0 evaluated: its validation accuracy, recomputed here, is metrics.json's
    model = StageRewardModel.from_pretrained(out / "model")
    dm = PreferenceDataModule(dataset["items"], dataset["pairs"], dataset["preferences"], stage="global",
                              modes=model.modes, image_size=32, val_fraction=0.25, batch_size=16)
    dm.setup()
    d, t, w = predict_deltas(model, dm.val_dataloader())
    assert preference_metrics(d, t, w)["pairwise_accuracy"] == pytest.approx(metrics["val"]["pairwise_accuracy"])
    # and it scores meshes through the scoring path, with the protocol the data was rendered with
    from rewardkit.io import from_trimesh
    from rewardkit.render import read_meta
    from rewardkit.scoring import Scorer, score_meshes

    items = pl.read_parquet(dataset["items"])
    meta = read_meta(dataset["root"] / items["render_dir"][0])
    scorer = Scorer(model, camera=meta["protocol"], render_config=meta["render_config"])
    smooth = _primitive("sphere")
    rough = _noisy(smooth, 0.025, seed=7)
    scores = score_meshes([from_trimesh(smooth, name="smooth"), from_trimesh(rough, name="rough")],
                          "a red sphere", [scorer])
    assert all(s.error is None for s in scores), scores
    assert all(torch.isfinite(torch.tensor(s.scores["global"])) for s in scores)


def test_rank_zero_from_the_launchers_environment_and_num_nodes_in_the_config():
    from rewardkit.config import ConfigError
    from rewardkit.train import TrainConfig
    from rewardkit.train.distributed import launched_as_rank_zero

    assert launched_as_rank_zero({})  # a plain run
    assert launched_as_rank_zero({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"})  # torchrun
    assert not launched_as_rank_zero({"RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1"})  # torchrun, 2nd node
    assert not launched_as_rank_zero({"LOCAL_RANK": "1", "NODE_RANK": "0"})  # Lightning's launcher, 2nd device
    assert not launched_as_rank_zero({"NODE_RANK": "1"})  # a 2nd node started by hand, before Lightning's launch
    assert not launched_as_rank_zero({"SLURM_PROCID": "3"})
    assert TrainConfig.from_dict({"num_nodes": 2, "devices": 4, "strategy": "ddp"}).num_nodes == 2
    with pytest.raises(ConfigError, match="num_nodes"):
        TrainConfig.from_dict({"num_nodes": 0})


@pytest.mark.slow
def test_two_ranks_launched_by_lightning_export_once(dataset, tmp_path):
    """`rewardkit train --set devices=2 --set strategy=ddp` on CPU: Lightning starts the second rank."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rewardkit", "train", "--config", str(_write_config(dataset, tmp_path)),
           "--set", "devices=2", "--set", "strategy=ddp", "--out", str(out)]
    r = subprocess.run(cmd, env=_env(tmp_path, out), cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "on 2 processes" in r.stdout and f"model in {out / 'model'}" in r.stdout
    assert "rank 1 of 2: trained; rank 0 evaluated and wrote the outputs" in r.stderr
    _check_run(dataset, tmp_path, out, world_size=2)


@pytest.mark.slow
def test_two_nodes_through_torchrun_on_loopback(dataset, tmp_path):
    """Two torchrun invocations (`--nnodes 2 --nproc-per-node 1`, c10d rendezvous on 127.0.0.1): one rank
    each, `num_nodes=2` in the config; Lightning checks the config against torchrun's world size."""
    out = tmp_path / "run"
    port = find_free_port()
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--local-addr", "127.0.0.1", "-m", "rewardkit", "train",
           "--config", str(_write_config(dataset, tmp_path)), "--set", "num_nodes=2", "--set", "devices=1",
           "--set", "strategy=ddp", "--out", str(out)]
    env = _env(tmp_path, out)
    nodes = [subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = []
    try:
        for p in nodes:
            outputs.append(p.communicate(timeout=300))
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for p, (so, se) in zip(nodes, outputs):
        assert p.returncode == 0, so + se[-4000:]
    stdout = "".join(so for so, _ in outputs)
    stderr = "".join(se for _, se in outputs)
    assert stdout.count("on 2 processes") == 1  # the summary comes from rank 0 alone
    assert "rank 1 of 2: trained; rank 0 evaluated and wrote the outputs" in stderr
    _check_run(dataset, tmp_path, out, world_size=2)
    assert json.loads((out / "metrics.json").read_text())["num_nodes"] == 2
