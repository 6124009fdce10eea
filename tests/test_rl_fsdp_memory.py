"""FSDP memory behaviour of the Hi-GRPO trainer on 2 gloo processes (real FSDP2 through Fabric): weights
loaded on rank 0 only and broadcast into meta-initialized shards, the reference policy sharded in bf16,
and gradients reduce-scattered after every micro-batch (never accumulated unsharded)."""

import json
import subprocess
import sys

import pytest
import torch

from rewardkit.rl.policy import MeshPolicy, build_tiny_policy

_SCRIPT = r"""
import json, sys, torch
from pathlib import Path
from torch.distributed.tensor import DTensor
from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer
from rewardkit.rl.sharding import full_state_dict
from rewardkit.rl.policy import RolloutBatch

out = Path(sys.argv[2])
cfg = HiGRPOConfig.from_dict(dict(
    policy_path=sys.argv[1], tokens_per_object=8, shape_tokenizer={"type": "voxel_blocks", "resolution": 4, "block": 2},
    prompts=["a cube", "a ball"], sampling={"max_reasoning_tokens": 3},
    rewards_global=[{"builtin": "occupied_fraction"}], rewards_local=[{"builtin": "occupied_fraction"}],
    group_size=2, prompts_per_step=1, micro_batch_size=1, dynamic_sampling=False, lr=1e-3,
    output_dir=str(out / "run"), eval_group_size=0, render=False, overlap_rewards=False,
    accelerator="cpu", devices=2, strategy="fsdp", precision="bf16-mixed", num_threads=1,
))
t = HiGRPOTrainer(cfg)
rank = t.fabric.global_rank
res = {"rank": rank}
ref = list(t.ref_model.parameters())
res["ref_dtypes"] = sorted({str(p.dtype) for p in ref})
res["ref_all_dtensor"] = all(isinstance(p, DTensor) for p in ref)
res["ref_local_fraction"] = sum(p.to_local().numel() for p in ref) / sum(p.numel() for p in ref)
res["policy_dtypes"] = sorted({str(p.dtype) for p in t.model.parameters()})
pol = full_state_dict(t.unwrapped_model)
refsd = full_state_dict(getattr(t.ref_model, "module", t.ref_model))
bufs = {n.replace("_checkpoint_wrapped_module.", ""): b.clone() for n, b in t.unwrapped_model.named_buffers()}
if rank == 0:
    torch.save({"policy": pol, "ref": refsd, "buffers": bufs}, out / "weights.pt")
# reference log-probs = the policy's at step 0 (the same bf16 values the policy all-gathers)
groups = t.rollout(cfg.prompts[:1], 2, seed=3)
b = RolloutBatch.collate([s for g in groups for s in g.steps["local"].sequences], t.policy.vocab.pad_id)
with torch.no_grad(), t.fabric.autocast():
    lp = t.policy.logprobs(t.model, b, cfg.sampling)
ref_lp = t.updater.ref_logprobs([b])[0]
res["ref_vs_policy_max_abs"] = float((lp - ref_lp).abs().max())
res["scored"] = int(b.mask.sum())
# every micro-batch's backward leaves sharded gradients only (FSDP2's unsharded accumulation buffer unused)
seen = []
backward = t.fabric.backward

def checked_backward(loss, *a, **k):
    backward(loss, *a, **k)
    params = [fp for m in t.unwrapped_model.modules() if hasattr(m, "_get_fsdp_state")
              for g in [m._get_fsdp_state()._fsdp_param_group] if g is not None for fp in g.fsdp_params]
    seen.append({"unsharded_grads": sum(fp.unsharded_accumulated_grad is not None for fp in params),
                 "sharded_grads": sum(fp.sharded_param.grad is not None for fp in params), "params": len(params)})

t.fabric.backward = checked_backward
m = t.train_step()
res["backwards"] = seen
res["loss"] = m["loss"]
(out / f"rank{rank}.json").write_text(json.dumps(res))
"""


@pytest.mark.slow
def test_fsdp_rank0_loading_bf16_sharded_reference_and_per_micro_batch_reduce_scatter(tmp_path):
    policy = tmp_path / "policy"
    build_tiny_policy(policy, ["a", "cube", "ball"], 256, 8, arch="qwen2", hidden_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, seed=1)
    script = tmp_path / "fsdp_memory.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(policy), str(tmp_path)], capture_output=True, text=True,
                          timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    start = MeshPolicy.from_pretrained(policy).model
    sd = start.state_dict()
    w = torch.load(tmp_path / "weights.pt")
    # the shards hold the checkpoint: fp32 master weights exactly, the reference as its bf16 rounding
    assert w["policy"].keys() == sd.keys() == w["ref"].keys()
    for k, v in sd.items():
        assert w["policy"][k].dtype == torch.float32 and torch.equal(w["policy"][k], v), k
        assert w["ref"][k].dtype == torch.bfloat16 and torch.equal(w["ref"][k], v.to(torch.bfloat16)), k
    for k, v in start.named_buffers():  # buffers outside the state dict (RoPE) arrive too
        assert torch.equal(w["buffers"][k], v), k
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["ref_dtypes"] == ["torch.bfloat16"] and r["ref_all_dtensor"]
        assert 0.4 < r["ref_local_fraction"] < 0.6  # half of the reference per rank
        assert r["policy_dtypes"] == ["torch.float32"]  # fp32 master weights
        assert r["scored"] > 10 and r["ref_vs_policy_max_abs"] < 1e-6
        # 2 samples x 2 steps at micro-batch 1: 4 backwards, each leaving only sharded gradients
        assert len(r["backwards"]) == 4
        for s in r["backwards"]:
            assert s["unsharded_grads"] == 0 and s["sharded_grads"] == s["params"] > 0
        assert r["loss"] == r["loss"]  # finite


@pytest.mark.slow
def test_host_memory_benchmark_smoke():
    """benchmarks/bench_rl_host_memory.py --smoke: both loadings run on 2 gloo processes and print one row per
    rank (the figures of a model large enough to see the difference come from its full run)."""
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rl_host_memory.py"
    proc = subprocess.run([sys.executable, str(bench), "--smoke"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line[:1] in ("0", "1")]
    assert [r[0] for r in rows] == ["0", "1"] and all(len(r) == 5 for r in rows), proc.stdout
    assert all(float(x) >= 0 for r in rows for x in r[1:])
