"""Multi-process Hi-GRPO runs (CPU, gloo): dynamic sampling decided by all ranks together under FSDP, and
the paper's multi-node launch (two torchrun nodes over loopback) with checkpoint and resume."""

from __future__ import annotations

import shutil
import textwrap

import pytest
import torch

from helpers.rl_runs import metric_rows, rl_config, run_rl, run_rl_two_nodes
from rewardkit.rl.policy import build_tiny_policy

# a reward that is flat (all samples 0.5) on rank 1 only, for its first ``flat_calls`` calls; varied elsewhere
FLAT_ON_RANK1 = textwrap.dedent('''
    import torch.distributed as dist

    def make(flat_calls=1):
        calls = [0]

        def reward(meshes, prompts):
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            calls[0] += 1
            if rank == 1 and calls[0] <= flat_calls:
                return [0.5] * len(meshes)
            return [float(i % 2) for i in range(len(meshes))]

        return reward
''')


@pytest.fixture(scope="module")
def tiny_fsdp_policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "tiny"
    build_tiny_policy(path, ["a", "cube", "ball", "cone", "plan", "detail"], codebook_size=256, tokens_per_object=8,
                      hidden_size=32, num_layers=2, num_heads=2, seed=0)
    return path


@pytest.mark.slow
def test_dynamic_sampling_rounds_are_decided_by_all_ranks_under_fsdp(tiny_fsdp_policy, tmp_path):
    """FSDP on 2 gloo processes, the reward flat on rank 1 in its first sampling round only: rank 1 needs a
    refill round, rank 0 does not. Every forward under FSDP is a collective (generate with synced_gpus
    all-gathers each layer), so a rank that samples again alone waits forever for the other (before the fix
    this run hung until killed). Now every rank runs the same rounds and the step trains."""
    (tmp_path / "flat_on_rank1.py").write_text(FLAT_ON_RANK1)
    term = {"fn": "flat_on_rank1:make", "args": {"flat_calls": 1}}
    cfg = rl_config(tmp_path, policy_path=str(tiny_fsdp_policy), strategy="fsdp", warm_start={"enabled": False},
                    rewards_global=[term], rewards_local=[term], dynamic_sampling=True, max_sampling_rounds=3,
                    steps=1, save_every=0)
    run_rl(tmp_path, cfg, timeout=150, extra_path=tmp_path)
    [row] = metric_rows(tmp_path / "run")
    assert row["sampling_rounds"] == 2.0  # the mean over ranks: both ran 2 rounds
    assert row["groups_kept"] == 1.0 and "skipped_update" not in row
    assert row["groups_dropped_flat"] == 0.5  # rank 1 dropped its first group, rank 0 none


@pytest.mark.slow
def test_two_torchrun_nodes_over_loopback_checkpoint_and_resume(tiny_fsdp_policy, tmp_path):
    """The multi-node launch of docs/hi-grpo.md, as two machines would run it: two ``torchrun --nnodes 2
    --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT`` invocations, one gloo process each, FSDP over both.
    Two steps with a checkpoint after each; a copy of the run resumed from step 1's sharded checkpoint (again
    as two nodes) continues at step 2 with the uninterrupted run's loss, rewards and final weights."""
    from safetensors.torch import load_file

    cfg = rl_config(tmp_path, policy_path=str(tiny_fsdp_policy), strategy="fsdp", devices=1, num_nodes=2,
                    warm_start={"enabled": False}, steps=2, save_every=1, keep_checkpoints=2, lr=0.01, mu=2)
    run_rl_two_nodes(tmp_path, cfg, timeout=240, name="full")
    full = metric_rows(tmp_path / "run")
    assert [r["step"] for r in full] == [1, 2]
    for step in (1, 2):  # one shard file per node
        assert len(list((tmp_path / "run" / "checkpoints" / f"step-{step:06d}" / "state").glob("*.distcp"))) == 2

    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / "latest").write_text("step-000001")
    run_rl_two_nodes(tmp_path, {**cfg, "output_dir": str(tmp_path / "resumed")}, timeout=240, name="resumed")
    resumed = metric_rows(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2]
    for key in ("loss", "global/reward", "local/reward", "grad_norm"):
        assert resumed[1][key] == pytest.approx(full[1][key], rel=1e-5, abs=1e-7), key
    a = load_file(str(tmp_path / "run" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "policy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_fsdp_with_lora_is_refused_in_one_line_before_any_process_starts(tmp_path):
    from rewardkit import config as _config
    from rewardkit.rl.trainer import LORA_FSDP_REFUSAL, HiGRPOConfig, HiGRPOTrainer

    cfg = HiGRPOConfig.from_dict(rl_config(tmp_path, strategy="fsdp", lora={"r": 4}, warm_start={"enabled": False}))
    with pytest.raises(_config.ConfigError) as e:
        HiGRPOTrainer(cfg)
    assert str(e.value) == LORA_FSDP_REFUSAL and "\n" not in LORA_FSDP_REFUSAL and "use strategy ddp" in str(e.value)
