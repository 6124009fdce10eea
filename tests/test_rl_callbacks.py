"""The Hi-GRPO trainer's callbacks and step record: a user's callback sees every hook in order and its metrics
join the step's row; the record insists on the two step names; a reward term cannot take a metric's name."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from rewardkit.config import ConfigError
from rewardkit.rl import Callback, GroupRollout, HiGRPOConfig, HiGRPOTrainer, StepSamples
from rewardkit.rl.policy import build_tiny_policy
from rewardkit.rl.rewards import RewardTerm, StepReward, occupied_fraction


def _config(tmp_path, **kw) -> HiGRPOConfig:
    build_tiny_policy(tmp_path / "policy", ["plan", "fill", "detail"], codebook_size=2, tokens_per_object=8,
                      hidden_size=16, num_layers=1, num_heads=2, seed=0)
    return HiGRPOConfig.from_dict(dict(
        policy_path=str(tmp_path / "policy"), tokens_per_object=8,
        shape_tokenizer={"type": "voxel_blocks", "resolution": 2, "block": 1}, prompts=["fill"],
        step1_template="plan {prompt}", step2_template="detail {prompt} {plan}", sampling={"max_reasoning_tokens": 1},
        group_size=2, prompts_per_step=1, output_dir=str(tmp_path / "run"), save_every=0, eval_group_size=2,
        render=False, accelerator="cpu", num_threads=1, seed=0, dynamic_sampling=False, **kw))


class Recorder(Callback):
    def __init__(self):
        self.calls: list[tuple] = []

    def on_rollouts(self, trainer, step, groups):
        assert all(isinstance(g, GroupRollout) and tuple(g.steps) == ("global", "local") for g in groups)
        self.calls.append(("rollouts", step, trainer.step))
        return {"global/reward_max": max(float(np.nanmax(g.steps["global"].reward)) for g in groups)}

    def on_step_end(self, trainer, step, groups, metrics):
        self.calls.append(("step_end", step, metrics["step"]))

    def on_evaluate(self, trainer, name, groups, metrics):
        self.calls.append(("evaluate", name, len(groups)))

    def on_train_end(self, trainer, summary):
        self.calls.append(("train_end",))
        summary["recorder"] = len(self.calls)


def test_a_users_callback_sees_every_hook_and_its_metrics_are_logged(tmp_path):
    rew = StepReward([RewardTerm("occupied", occupied_fraction(2))])
    rec = Recorder()
    trainer = HiGRPOTrainer(_config(tmp_path), rewards_global=rew, rewards_local=rew, callbacks=[rec])
    assert [type(c).__name__ for c in trainer.callbacks] == ["GuardCallback", "CandidateExport", "Audit", "Recorder"]
    summary = trainer.train(steps=2)
    assert rec.calls == [("evaluate", "samples_before", 1), ("rollouts", 1, 0), ("step_end", 1, 1),
                         ("rollouts", 2, 1), ("step_end", 2, 2), ("evaluate", "samples_after", 1), ("train_end",)]
    assert summary["recorder"] == 7 and "guard" in summary
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [float(r["global/reward_max"]) for r in rows] == [r["global/reward_max"] for r in trainer.records]
    assert {"global/reward", "local/reward", "global/occupied", "global/loss", "local/kl", "global/tokens"} <= set(rows[0])
    assert not any(k.startswith(("high/", "low/", "step1/", "step2/", "r_high")) for k in rows[0])


def test_the_record_names_its_two_steps_and_selects_samples():
    def steps(n):
        return StepSamples(sequences=[], meshes=[None] * n, reward=np.arange(n, dtype=float),
                           terms={"t": np.arange(n) * 2.0})

    g = GroupRollout(prompt="p", steps={"global": steps(3), "local": steps(3)}, seed=5)
    sub = g.select([2, 0])
    assert sub.group_size == 2 and sub.steps["local"].terms["t"].tolist() == [4.0, 0.0] and sub.seed == 5
    with pytest.raises(ValueError, match="global"):
        GroupRollout(prompt="p", steps={"high": steps(3), "low": steps(3)})


def test_a_reward_term_cannot_take_a_metric_name(tmp_path):
    cfg = _config(tmp_path, rewards_global=[{"name": "loss", "builtin": "occupied_fraction"}],
                  rewards_local=[{"builtin": "occupied_fraction"}])
    with pytest.raises(ConfigError, match="rewards_global: term name 'loss' is reserved"):
        HiGRPOTrainer(cfg)
