"""rewardkit.rl.generation_eval (the eval_gen stage's library): two policies' two-step generations on held-out
prompts, scored with AR3D-R1's Table 4 metrics on random-init extractors, a report per run and the change."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_two_policies_are_sampled_rendered_and_compared(tmp_path):
    from rewardkit.config import ConfigError
    from rewardkit.rl import HiGRPOConfig
    from rewardkit.rl.generation_eval import evaluate_policies
    from rewardkit.rl.policy import build_tiny_policy

    policy = tmp_path / "policy"
    build_tiny_policy(policy, ["a", "small", "cube", "tall", "cone", "plan"], codebook_size=256, tokens_per_object=64,
                      hidden_size=32, num_layers=1, num_heads=2, seed=0)
    rl_cfg = HiGRPOConfig.from_dict({
        "policy_path": str(policy), "output_dir": str(tmp_path / "rl"), "tokens_per_object": 64,
        "shape_tokenizer": {"type": "voxel_blocks", "resolution": 8, "block": 2},
        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_reasoning_tokens": 4},
        "prompts": ["a cube"], "accelerator": "cpu", "num_threads": 1})
    p = {"prompts": [{"prompt": "a small cube", "shape": "cube", "category": "spatial_structural_geometry"},
                     {"prompt": "a tall cone", "shape": "cone", "category": "stylized_representation"}],
         "samples_per_prompt": 2, "references_per_prompt": 2, "seed": 0, "random_init_extractors": True,
         "inception_input_size": 75,
         "protocol": {"views": "30:20,150:20", "size": 32, "shading": "untextured", "kd": {"subsets": 4, "subset_size": 4},
                      "batch_size": 16}}
    report = evaluate_policies(p, rl_cfg, {"init": policy, "final": policy}, tmp_path / "out",
                               tmp_path / "eval_gen.json", tmp_path / "plots")
    assert json.loads((tmp_path / "eval_gen.json").read_text()) == report
    assert report["heldout_prompts"] == 2 and report["random_init_extractors"]
    # the same policy and seed on both sides: the same samples, so no change at all
    assert report["init"]["overall"] == report["final"]["overall"] and set(report["change"]) >= {"fd_incep"}
    assert all(v == pytest.approx(0.0) for v in report["change"].values())
    assert (tmp_path / "plots" / "metrics.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="is an rl training prompt"):
        evaluate_policies({**p, "prompts": [{"prompt": "a cube", "shape": "cube", "category": "x"}]}, rl_cfg,
                          {"init": policy}, tmp_path / "o2", tmp_path / "r2.json", tmp_path / "p2")
