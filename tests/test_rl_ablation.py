"""AR3D-R1 Table 2's algorithm ablation as config switches (docs/hi-grpo.md, "Algorithm ablation"): the
defaults are the paper's best recipe, every switch reaches the trainer, and KL removal (beta 0) holds no
reference policy at all. The maths of each switch is checked by hand in tests/test_hi_grpo_math.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewardkit import config as _config
from rewardkit.rl.policy import build_tiny_policy
from rewardkit.rl.rewards import RewardTerm, StepReward
from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "tiny"
    build_tiny_policy(path, ["plan", "fill", "grow", "detail"], codebook_size=2, tokens_per_object=8,
                      hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return path


def _cfg(policy, out, **kw) -> HiGRPOConfig:
    base = dict(policy_path=str(policy), tokens_per_object=8,
                shape_tokenizer={"type": "voxel_blocks", "resolution": 2, "block": 1}, prompts=["fill", "grow"],
                step1_template="plan {prompt}", step2_template="detail {prompt} {plan}",
                sampling={"max_reasoning_tokens": 3}, group_size=4, prompts_per_step=2, steps=1,
                output_dir=str(out), save_every=0, eval_group_size=0, render=False, accelerator="cpu", num_threads=1)
    return HiGRPOConfig.from_dict({**base, **kw})


def _index_reward() -> StepReward:  # always spread within a group, so no group is dropped
    return StepReward([RewardTerm("index", lambda meshes, prompts: [float(i % 4) for i in range(len(meshes))])])


def test_defaults_are_the_papers_best_recipe_and_bad_values_are_config_errors():
    c = HiGRPOConfig()
    # Table 2's last row: decoupled clip + dynamic sampling + token-level average, KL kept, token-level ratio
    assert c.eps_high > c.eps_low and (c.eps_low, c.eps_high) == (0.2, 0.28)
    assert c.dynamic_sampling and c.loss_aggregation == "token" and c.beta == 0.01
    assert c.importance_sampling_level == "token"
    for key, bad in (("loss_aggregation", "sample"), ("importance_sampling_level", "seq")):
        with pytest.raises(_config.ConfigError, match=key):
            HiGRPOConfig.from_dict({key: bad})


def test_kl_removal_holds_no_reference_model_anywhere(tiny_policy, tmp_path):
    from rewardkit.plan.memory import count_model, plan_for_config

    kept = HiGRPOTrainer(_cfg(tiny_policy, tmp_path / "kl"), rewards_global=_index_reward(), rewards_local=_index_reward())
    assert kept.ref_model is not None
    t = HiGRPOTrainer(_cfg(tiny_policy, tmp_path / "nokl", beta=0.0), rewards_global=_index_reward(),
                      rewards_local=_index_reward())
    assert t.ref_model is None and t.reference_mode is None
    modules = [v for v in vars(t).values() if isinstance(v, nn.Module)]
    assert modules == [t.model]  # the trained policy is the only model the trainer holds
    m = t.train_step()
    assert m["global/kl"] == 0.0 and m["local/kl"] == 0.0
    # the memory plan counts no reference either (with beta > 0 it plans a sharded copy of the parameters)
    counts = count_model(t.policy.model, None)
    ref = lambda cfg: sum(v for k, v in plan_for_config(cfg, counts).persistent.items() if "reference" in k)  # noqa: E731
    assert ref(HiGRPOConfig(strategy="fsdp", devices=8, beta=0.01)) >= counts.total / 8  # >= bf16 bytes, sharded
    assert ref(HiGRPOConfig(strategy="fsdp", devices=8, beta=0.0)) == 0.0


def test_per_sequence_aggregation_reaches_the_loss(tiny_policy, tmp_path):
    """With beta 0 and one update (ratio 1) the per-sequence mean is -(1/N_seq) sum_i A_i, and a group's
    normalized advantages sum to 0: the loss is 0 whatever the lengths. The token-level loss weighs each
    advantage by its sample's length: -(1/N) sum_i A_i T_i."""
    cfg = dict(beta=0.0, mu=1, dynamic_sampling=False)
    seq = HiGRPOTrainer(_cfg(tiny_policy, tmp_path / "seq", loss_aggregation="sequence", **cfg),
                        rewards_global=_index_reward(), rewards_local=_index_reward())
    m = seq.train_step()
    assert m["loss"] == pytest.approx(0.0, abs=1e-6)
    tok = HiGRPOTrainer(_cfg(tiny_policy, tmp_path / "tok", **cfg), rewards_global=_index_reward(),
                        rewards_local=_index_reward())
    groups, _ = tok.collect(0)
    adv, _ = tok.updater.advantages(groups)
    lengths = torch.tensor([float(sum(s.action_mask)) for g in groups for s in g.steps["global"].sequences])
    assert lengths.unique().numel() > 1  # reasoning lengths differ, so the two aggregations differ
    by_hand = -(adv[0] * lengths).sum() / lengths.sum()
    assert tok.optimize(groups)["global/loss"] == pytest.approx(float(by_hand), abs=1e-5)


def test_gspo_sequence_ratio_reaches_the_update(tiny_policy, tmp_path):
    """At the first update (ratio 1) the sequence ratio's gradient is the token ratio's (by hand in
    tests/test_hi_grpo_math.py), so mu 1 gives the same gradients; the second update (mu 2) sees ratios != 1
    and, with a tight clip, different gradients."""
    def grads(level: str, mu: int) -> list[torch.Tensor]:  # the last update's gradients
        t = HiGRPOTrainer(_cfg(tiny_policy, tmp_path / f"{level}{mu}", importance_sampling_level=level, mu=mu, lr=0.05,
                               eps_low=0.01, eps_high=0.01, dynamic_sampling=False, max_grad_norm=0.0),
                          rewards_global=_index_reward(), rewards_local=_index_reward())
        t.train_step()
        return [p.grad.clone() for p in t.model.parameters() if p.grad is not None]

    one_tok, one_seq = grads("token", 1), grads("sequence", 1)
    assert len(one_tok) == len(one_seq) > 0
    # equal up to float rounding (the chunked log-probs sum in another order: ~1e-8 here)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(one_tok, one_seq))
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(grads("token", 2), grads("sequence", 2)))
