"""Hi-GRPO trainer end to end on tiny policies: the policy measurably improves its expected reward,
dynamic sampling drops zero-variance groups, reward failures raise or are masked, resume repeats the
next step exactly, and ``rewardkit rl --config`` writes its artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rewardkit.rl.policy import build_tiny_policy
from rewardkit.rl.rewards import RewardError, RewardTerm, StepReward, occupied_fraction
from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

torch.set_num_threads(1)

PROMPTS = ["fill", "grow"]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    # 2^3 grid, one voxel per token: 8 tokens per object, codebook 2 (<mesh0> empty, <mesh1> full)
    path = tmp_path_factory.mktemp("policy") / "tiny"
    build_tiny_policy(path, ["plan", "fill", "grow", "detail", "big", "small"], codebook_size=2, tokens_per_object=8,
                      hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return path


def _config(policy, out, **kw) -> HiGRPOConfig:
    base = dict(
        policy_path=str(policy), tokens_per_object=8, shape_tokenizer={"type": "voxel_blocks", "resolution": 2, "block": 1},
        prompts=PROMPTS, step1_template="plan {prompt}", step2_template="detail {prompt} {plan}",
        sampling={"max_reasoning_tokens": 2}, group_size=8, prompts_per_step=2, lr=0.03, beta=0.01, mu=2,
        steps=10, output_dir=str(out), save_every=0, eval_group_size=0, render=False, accelerator="cpu",
        num_threads=1, micro_batch_size=16, seed=0,
    )
    base.update(kw)
    return HiGRPOConfig.from_dict(base)


def _fraction() -> StepReward:
    return StepReward([RewardTerm("occupied", occupied_fraction(2))])


def _expected_reward(trainer: HiGRPOTrainer) -> tuple[float, float]:
    groups = trainer.rollout(PROMPTS, 64, seed=12345)
    return float(np.mean([g.r_high for g in groups])), float(np.mean([g.r_low for g in groups]))


def test_policy_increases_expected_reward(tiny_policy, tmp_path):
    # R_high: occupied fraction of the coarse shape; R_low: occupied fraction of the refined one
    trainer = HiGRPOTrainer(_config(tiny_policy, tmp_path), reward_high=_fraction(), reward_low=_fraction())
    before = _expected_reward(trainer)
    trainer.train(steps=10)
    after = _expected_reward(trainer)
    assert after[0] > before[0] + 0.15, (before, after)
    assert after[1] > before[1] + 0.15, (before, after)
    # logs: one row per step, every reward term with mean and within-group std
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
    for key in ("r_high", "r_low", "high/occupied", "high/occupied_group_std", "low/occupied_group_std",
                "step1/kl", "step2/clip_high_frac", "groups_dropped"):
        assert key in rows[-1], key
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("step,")
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["r_high_rose"] and summary["r_low_rose"]
    assert (tmp_path / "reward_curve.png").stat().st_size > 0
    assert (tmp_path / "policy" / "config.json").exists()  # the trained policy is a HF checkpoint


def _flat_or_varied() -> StepReward:
    frac = occupied_fraction(2)

    def fn(meshes, prompts):
        v = frac(meshes, prompts)
        return [1.0 if p == "fill" else x for p, x in zip(prompts, v)]

    return StepReward([RewardTerm("flat_or_varied", fn)])


def test_dynamic_sampling_drops_zero_variance_groups_and_refills(tiny_policy, tmp_path):
    cfg = _config(tiny_policy, tmp_path, prompts_per_step=2, max_sampling_rounds=3)
    trainer = HiGRPOTrainer(cfg, reward_high=_flat_or_varied(), reward_low=_flat_or_varied())
    kept, info = trainer.collect(step=0)
    flat = sum(g.prompt == "fill" for g in info["sampled"])
    assert flat >= 1  # the flat prompt was drawn ...
    assert all(g.prompt == "grow" for g in kept)  # ... and dropped; the refill rounds drew "grow" again
    assert info["groups_dropped"] == flat and info["sampling_rounds"] >= 2
    assert len(kept) == 2

    off = HiGRPOTrainer(_config(tiny_policy, tmp_path / "off", dynamic_sampling=False),
                        reward_high=_flat_or_varied(), reward_low=_flat_or_varied())
    kept_off, info_off = off.collect(step=0)
    assert {g.prompt for g in kept_off} == set(PROMPTS) and info_off["groups_dropped"] == 0

    # nothing but flat groups: the step is skipped (no update), not crashed
    only_flat = HiGRPOTrainer(_config(tiny_policy, tmp_path / "flat", prompts=["fill"], prompts_per_step=1),
                              reward_high=_flat_or_varied(), reward_low=_flat_or_varied())
    before = [p.detach().clone() for p in only_flat.model.parameters()]
    m = only_flat.train_step()
    assert m["groups_kept"] == 0 and "loss" not in m
    assert all(torch.equal(a, b) for a, b in zip(before, only_flat.model.parameters()))


def test_failed_reward_raises_or_is_masked(tiny_policy, tmp_path):
    def flaky(meshes, prompts):
        return [None if i % 3 == 0 else 0.5 + 0.1 * (i % 2) for i in range(len(meshes))]

    def broken(meshes, prompts):
        raise ConnectionError("scorer service down")

    with pytest.raises(RewardError, match="broken"):
        StepReward([RewardTerm("broken", broken)])([None, None], ["a", "b"])
    with pytest.raises(RewardError, match="no value"):
        StepReward([RewardTerm("flaky", flaky)])([None] * 3, ["a"] * 3)
    res = StepReward([RewardTerm("broken", broken)], on_error="mark")([None, None], ["a", "b"])
    assert np.isnan(res.total).all() and res.failures == {"broken": 2}

    cfg = _config(tiny_policy, tmp_path, reward_on_error="mark")
    trainer = HiGRPOTrainer(cfg, reward_high=StepReward([RewardTerm("flaky", flaky)], on_error="mark"), reward_low=_fraction())
    m = trainer.train_step()
    assert m["failed/high/flaky"] > 0
    assert np.isfinite(m["loss"]) and m["tokens/step1"] < m["tokens/step2"]  # failed samples' step-1 tokens masked

    strict = HiGRPOTrainer(_config(tiny_policy, tmp_path / "strict"),
                           reward_high=StepReward([RewardTerm("broken", broken)]), reward_low=_fraction())
    with pytest.raises(RewardError):
        strict.train_step()


def test_resume_gives_the_same_next_step(tiny_policy, tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = HiGRPOTrainer(_config(tiny_policy, a_dir, save_every=2), reward_high=_fraction(), reward_low=_fraction())
    a.train(steps=2)
    shutil.copytree(a_dir, b_dir)
    next_a = a.train_step()

    b = HiGRPOTrainer(_config(tiny_policy, b_dir, save_every=2), reward_high=_fraction(), reward_low=_fraction())
    assert b.load_checkpoint() == 2 and len(b.records) == 2
    next_b = b.train_step()
    assert next_b["step"] == next_a["step"] == 3
    for key in ("r_high", "r_low", "loss", "step1/kl", "step2/ratio_mean", "grad_norm"):
        assert next_b[key] == pytest.approx(next_a[key], rel=1e-6, abs=1e-9), key
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-7)


def test_cli_runs_end_to_end_with_warm_start(tmp_path):
    from click.testing import CliRunner

    from rewardkit.cli import main

    cfg = {
        "policy_path": str(tmp_path / "init"),
        "tokens_per_object": 8,
        "shape_tokenizer": {"type": "voxel_blocks", "resolution": 4, "block": 2},
        "prompts": ["a cube", "a ball"],
        "sampling": {"max_reasoning_tokens": 4},
        "rewards_high": [{"builtin": "occupancy_iou"}],
        "rewards_low": [{"builtin": "surface_f1"}, {"name": "sym", "builtin": "mirror_symmetry", "weight": 0.5}],
        "group_size": 4, "prompts_per_step": 2, "lr": 0.001, "steps": 2, "save_every": 1,
        "output_dir": str(tmp_path / "run"), "eval_group_size": 2, "render_size": 64,
        "accelerator": "cpu", "num_threads": 1,
        "warm_start": {"enabled": True, "arch": "qwen2_5_vl", "shapes": ["cube", "sphere"], "steps": 10, "hidden_size": 32,
                       "num_layers": 1},
    }
    path = tmp_path / "rl.yaml"
    path.write_text(json.dumps(cfg))
    result = CliRunner().invoke(main, ["rl", "--config", str(path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for f in ("metrics.jsonl", "metrics.csv", "metrics.json", "reward_curve.png", "config.json",
              "samples_before/samples.json", "samples_after/samples.json", "samples_before/renders.png",
              "samples_after/renders.png", "policy/config.json", "checkpoints/latest"):
        assert (run / f).exists(), f
    assert (tmp_path / "init" / "warm_start.json").exists()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert "low/sym_group_std" in rows[-1] and "high/occupancy_iou" in rows[-1]
    # running again resumes from the last checkpoint and has nothing left to do
    again = CliRunner().invoke(main, ["rl", "--config", str(path)])
    assert again.exit_code == 0, again.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_two_process_ddp_by_config_alone(tmp_path):
    """devices/strategy in the config are all it takes (here 2 CPU processes, gloo; GPUs work the same)."""
    import subprocess
    import sys

    cfg = {
        "policy_path": str(tmp_path / "init"), "tokens_per_object": 8,
        "shape_tokenizer": {"type": "voxel_blocks", "resolution": 4, "block": 2},
        "prompts": ["a cube", "a ball", "a cone"], "sampling": {"max_reasoning_tokens": 3},
        "rewards_high": [{"builtin": "occupancy_iou"}], "rewards_low": [{"builtin": "surface_f1"}],
        "group_size": 4, "prompts_per_step": 1, "lr": 0.001, "steps": 2, "save_every": 2,
        "output_dir": str(tmp_path / "run"), "eval_group_size": 0, "render": False,
        "accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_threads": 1,
        "warm_start": {"enabled": True, "shapes": ["cube", "sphere", "cone"], "steps": 5, "hidden_size": 32, "num_layers": 1},
    }
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "rewardkit", "rl", "--config", str(path)], capture_output=True,
                          text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # written once, by rank 0
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "policy" / "config.json").exists()


def test_shipped_configs_and_params_yaml_section(tmp_path):
    from pathlib import Path

    import rewardkit.rl
    from rewardkit.rl.trainer import load_config

    cfg_dir = Path(rewardkit.rl.__file__).parent / "configs"
    for name in ("demo.json", "demo_scorers.json"):
        cfg = load_config(cfg_dir / name)
        assert cfg.warm_start.enabled and cfg.tokens_per_object == 64 and cfg.rewards_high and cfg.rewards_low
    assert any("scorer" in t for t in load_config(cfg_dir / "demo_scorers.json").rewards_high)
    params = tmp_path / "params.yaml"
    params.write_text("train: {lr: 1}\nrl:\n  policy_path: p\n  prompts: [a cube]\n  beta: 0.02\n  sampling: {top_p: 0.7}\n")
    cfg = load_config(params, {"steps": 3})
    assert (cfg.policy_path, cfg.beta, cfg.sampling.top_p, cfg.steps, cfg.group_size, cfg.lr) == ("p", 0.02, 0.7, 3, 8, 1e-6)
    with pytest.raises(ValueError, match="unknown"):
        HiGRPOConfig.from_dict({"policy_path": "p", "bogus": 1})


def test_no_resume_starts_a_clean_run(tiny_policy, tmp_path):
    cfg = _config(tiny_policy, tmp_path, save_every=1)
    HiGRPOTrainer(cfg, reward_high=_fraction(), reward_low=_fraction()).train(steps=2)
    again = HiGRPOTrainer(cfg, reward_high=_fraction(), reward_low=_fraction())
    again.train(steps=1, resume=False)
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000001"]
