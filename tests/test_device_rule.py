"""One device rule (issue 15): load_scorer, score_meshes, the TRL / verl adapters, the Hi-GRPO scorer
rewards and the CLI default to ``auto`` and refuse a device this machine does not have in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from helpers.scoring import mesh_files, scorer_set_dir

from rewardkit.devices import DeviceError, resolve_device

MISSING = f"cuda:{torch.cuda.device_count() + 7}"  # a GPU index no machine here has


def test_everything_defaults_to_auto():
    from rewardkit.rl.scorer_adapters import scorer_reward
    from rewardkit.scoring import load_scorer
    from rewardkit.scoring.adapters import trl_reward_function

    auto = torch.device(resolve_device("auto")).type
    s = load_scorer(scorer_set_dir())
    assert {sc.device.type for _, sc in s.items()} == {auto}
    r = trl_reward_function(str(scorer_set_dir()), stage="global")
    assert r.backend.scorers["global"].device.type == auto
    fn = scorer_reward(str(scorer_set_dir()), stage="local")
    assert fn([mesh_files()["cone"]], ["a cone"])[0] is not None


def test_a_missing_device_is_one_clear_error():
    from rewardkit.rl.scorer_adapters import scorer_reward
    from rewardkit.scoring import Scorer, ScorerSet, load_scorer, score_meshes
    from rewardkit.scoring.adapters import clear_cache, compute_score, trl_reward_function

    d = scorer_set_dir()
    calls = [lambda: load_scorer(d, device=MISSING), lambda: ScorerSet.from_pretrained(d, device=MISSING),
             lambda: Scorer.from_pretrained(d / "global", device=MISSING),
             lambda: score_meshes([mesh_files()["cone"]], "a cone", str(d), device=MISSING),
             lambda: trl_reward_function(str(d), device=MISSING), lambda: scorer_reward(str(d), device=MISSING),
             lambda: compute_score("x", "v 0 0 0", "a cone", {"mesh_path": str(mesh_files()["cone"])},
                                   scorer_dir=str(d), device=MISSING)]
    for call in calls:
        clear_cache()
        with pytest.raises(DeviceError, match="CUDA"):
            call()
    with pytest.raises(DeviceError, match="unknown device"):
        load_scorer(d, device="tpu-ish")


def test_cli_refuses_a_missing_device_in_one_line():
    p = subprocess.run([sys.executable, "-m", "rewardkit", "score", str(mesh_files()["cone"]), "-p", "a cone",
                        "--scorer", str(scorer_set_dir()), "--device", MISSING], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2
    [line] = p.stderr.strip().splitlines()
    assert "--device" in line and MISSING in line
