"""Reward terms: builtin occupancy rewards, config parsing, and exported rewardkit scorers (in-process and
through the HTTP service) driving the same Hi-GRPO trainer code path."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch

from helpers.scoring import scorer_set_dir
from rewardkit.rl.policy import build_tiny_policy
from rewardkit.rl.rewards import build_step_reward, build_term, mirror_symmetry, occupancy_iou, surface_f1
from rewardkit.demo.shapes import DEMO_SHAPES, demo_shape, jitter
from rewardkit.rl.tokenizers import occupancy_to_mesh
from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

torch.set_num_threads(1)


def test_builtin_occupancy_rewards_by_hand():
    cube = demo_shape("cube").occupancy(8)
    half = cube.copy()
    half[:4] = False  # keep 32 of the 64 voxels
    meshes = [occupancy_to_mesh(cube), occupancy_to_mesh(half), None]
    prompts = ["a cube"] * 3
    assert occupancy_iou(8)(meshes, prompts) == pytest.approx([1.0, 0.5, 0.0])
    assert surface_f1(8)(meshes, prompts)[0] == pytest.approx(1.0)
    assert mirror_symmetry(8)(meshes, prompts) == pytest.approx([1.0, 0.0, 0.0])
    shifted = jitter(cube, np.random.default_rng(3), max_shift=1)
    assert occupancy_iou(8)([occupancy_to_mesh(shifted)], ["a cube"])[0] <= 1.0
    # external meshes are voxelized at the reward's resolution
    import trimesh

    assert occupancy_iou(8, targets={"box": np.ones((8, 8, 8), bool)})([trimesh.creation.box()], ["box"]) == [1.0]


def test_term_specs():
    t = build_term({"builtin": "occupancy_iou", "weight": 2.0}, defaults={"resolution": 4})
    assert (t.name, t.weight, t.dims) == ("occupancy_iou", 2.0, 1.0)
    t = build_term({"name": "f", "fn": "rewardkit.rl.rewards:occupied_fraction", "args": {"resolution": 4}, "dims": 3})
    assert t.name == "f" and t.dims == 3.0
    with pytest.raises(ValueError, match="exactly one"):
        build_term({"builtin": "occupancy_iou", "fn": "x:y"})
    with pytest.raises(ValueError, match="config key .builtin.: .nope. is not one of .occupancy_iou."):
        build_term({"builtin": "nope"})
    # weighted, dimension-normalized sum: R = 2 * iou + frac / 3
    step = build_step_reward([{"builtin": "occupancy_iou", "weight": 2.0},
                              {"name": "frac", "fn": "rewardkit.rl.rewards:occupied_fraction", "args": {"resolution": 8}, "dims": 3}],
                             defaults={"resolution": 8})
    cube = occupancy_to_mesh(DEMO_SHAPES["cube"].occupancy(8))
    res = step([cube], ["a cube"])
    assert res.total[0] == pytest.approx(2 * 1.0 + (64 / 512) / 3)
    assert set(res.terms) == {"occupancy_iou", "frac"}


def test_exported_scorer_set_terms_score_policy_meshes():
    d = scorer_set_dir()
    glob = build_term({"scorer": str(d), "args": {"stage": "global"}})
    loc = build_term({"scorer": str(d), "args": {"stage": "local", "empty_score": -1.0}})
    meshes = [occupancy_to_mesh(DEMO_SHAPES["table"].occupancy(8)), None, occupancy_to_mesh(DEMO_SHAPES["arch"].occupancy(8))]
    prompts = ["a small table", "a ball", "an arch"]
    gl, lo = glob.fn(meshes, prompts), loc.fn(meshes, prompts)
    assert gl[1] is None and lo[1] == -1.0  # no mesh: None (raise/mark) unless empty_score is configured
    assert all(isinstance(x, float) for x in (gl[0], gl[2], lo[0], lo[2]))
    with pytest.raises(ValueError):
        build_term({"scorer": str(d), "args": {"stage": "global", "weights": {"global": 1.0}}})


def _scorer_config(tmp_path, high, low) -> HiGRPOConfig:
    build_tiny_policy(tmp_path / "p", ["a", "cube", "plan"], codebook_size=256, tokens_per_object=8,
                      hidden_size=32, num_layers=1, num_heads=2)
    return HiGRPOConfig.from_dict(dict(
        policy_path=str(tmp_path / "p"), tokens_per_object=8, shape_tokenizer={"type": "voxel_blocks", "resolution": 4, "block": 2},
        prompts=["a cube"], sampling={"max_reasoning_tokens": 2}, group_size=3, prompts_per_step=1, lr=1e-3,
        rewards_global=high, rewards_local=low, reward_on_error="mark", output_dir=str(tmp_path / "run"),
        save_every=0, eval_group_size=0, accelerator="cpu", num_threads=1,
    ))


def test_trainer_step_with_exported_scorers(tmp_path):
    d = str(scorer_set_dir())
    cfg = _scorer_config(tmp_path, [{"name": "global", "scorer": d, "args": {"stage": "global"}}],
                         [{"name": "local", "scorer": d, "args": {"stage": "local"}},
                          {"builtin": "mirror_symmetry", "weight": 0.5}])
    m = HiGRPOTrainer(cfg).train_step()
    assert np.isfinite(m["global/global"]) and np.isfinite(m["local/local"]) and "local/local_group_std" in m
    assert np.isfinite(m["loss"]) or m["groups_kept"] == 0


@pytest.fixture(scope="module")
def scorer_service():
    import uvicorn

    from rewardkit.scoring import load_scorer
    from rewardkit.scoring.service import create_app

    app = create_app(load_scorer(scorer_set_dir()), max_batch=16, batch_window_ms=5.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_service_terms_match_in_process_scores(scorer_service):
    meshes = [occupancy_to_mesh(DEMO_SHAPES["cone"].occupancy(8))]
    remote = build_term({"url": scorer_service, "args": {"stage": "global"}}).fn(meshes, ["a cone"])
    local = build_term({"scorer": str(scorer_set_dir()), "args": {"stage": "global"}}).fn(meshes, ["a cone"])
    assert remote[0] == pytest.approx(local[0], abs=1e-4)
    dead = build_term({"url": "http://127.0.0.1:9", "args": {"stage": "global", "timeout": 2.0}})
    assert dead.fn(meshes, ["a cone"]) == [None]  # an unreachable service marks the sample, never a constant
