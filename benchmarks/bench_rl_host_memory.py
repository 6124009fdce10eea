"""Host memory (RSS) per rank while an FSDP Hi-GRPO run loads its policy and reference: the trainer's loading
(meta-device init, rank 0 reads the checkpoint, each tensor broadcast into the shards; the reference built
sharded in the compute dtype) against the previous loading (every rank reads the whole fp32 model and
deep-copies it for the reference before sharding), on 2 gloo processes, side by side in one run.

    python benchmarks/bench_rl_host_memory.py            # a 122M-parameter Qwen2 (0.5 GB in fp32), ~3-10 min
    python benchmarks/bench_rl_host_memory.py --smoke    # a tiny model: the code path only

Per rank: the peak resident set (VmHWM, reset through /proc/self/clear_refs) while loading, minus the
resident set just before (after imports), so Python, torch and the process group are not counted; glibc's
mmap threshold is fixed at 64 KiB so freed tensors leave the resident set. Both loadings run in the same 2
processes (the trainer's first, then the previous one), bf16-mixed as the paper config (fp32 master weights,
the reference in bf16 now, in fp32 before).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=2, intermediate_size=2048, vocab_size=32000)
MODEL_SMOKE = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=4096)


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _kb("VmRSS") * 1024


def measure(args: dict) -> None:
    import copy
    import gc

    import torch

    from rewardkit.rl.policy import MeshPolicy
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    torch.set_num_threads(1)
    out = Path(args["dir"])
    cfg = HiGRPOConfig.from_dict(dict(
        policy_path=str(out / "policy"), tokens_per_object=8, shape_tokenizer={"type": "voxel_blocks", "resolution": 4, "block": 2},
        prompts=["a cube"], rewards_global=[{"builtin": "occupied_fraction"}], rewards_local=[{"builtin": "occupied_fraction"}],
        output_dir=str(out / "run"), eval_group_size=0, render=False, accelerator="cpu", devices=2, strategy="fsdp",
        precision="bf16-mixed", num_threads=1, reference="copy",
    ))
    import lightning.fabric  # noqa: F401 - imported before the baseline, as the model classes below
    from transformers import Qwen2ForCausalLM  # noqa: F401

    gc.collect()
    base = _reset_peak()
    # the trainer's loading (it launches the second process, which re-runs this script up to here)
    trainer = HiGRPOTrainer(cfg)
    now = _kb("VmHWM") * 1024 - base
    now_after = _kb("VmRSS") * 1024 - base
    params = sum(p.numel() for p in trainer.model.parameters())
    fabric = trainer.fabric
    del trainer
    gc.collect()
    fabric.barrier()
    base = _reset_peak()
    # the previous loading: every rank reads the whole fp32 model and deep-copies it before sharding
    model = MeshPolicy.from_pretrained(out / "policy", dtype="float32").model
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    ref = fabric.setup_module(ref)
    model = fabric.setup_module(model)
    before = _kb("VmHWM") * 1024 - base
    before_after = _kb("VmRSS") * 1024 - base
    print("RESULT " + json.dumps({"rank": fabric.global_rank, "params": params, "now_peak": now, "now_after": now_after,
                                  "before_peak": before, "before_after": before_after}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._measure:
        measure(json.loads(a._measure))
        return 0
    from rewardkit.rl.policy import build_tiny_policy

    spec = MODEL_SMOKE if a.smoke else MODEL
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_policy(Path(tmp) / "policy", ["a", "cube", "ball"], 256, 8, arch="qwen2", max_positions=512, **{
            k: spec[k] for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size")})
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", MALLOC_ARENA_MAX="1",
                   OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, __file__, "--_measure", json.dumps({"dir": tmp})], env=env, cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"measurement failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        rows = sorted((json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("RESULT ")),
                      key=lambda x: x["rank"])
    n = rows[0]["params"]
    print(f"FSDP over 2 gloo processes, bf16-mixed; a Qwen2 of {n:,} parameters ({4 * n / 1e6:.0f} MB in fp32, "
          f"checkpoint in fp32); host memory per rank while loading policy + reference (MB above the pre-load RSS)")
    print(f"{'rank':<5}{'previous: peak':>16}{'after':>8}{'trainer now: peak':>19}{'after':>8}")
    for x in rows:
        print(f"{x['rank']:<5}{x['before_peak'] / 1e6:16.0f}{x['before_after'] / 1e6:8.0f}{x['now_peak'] / 1e6:19.0f}"
              f"{x['now_after'] / 1e6:8.0f}")
    print("(previous: every rank from_pretrained in fp32 + deepcopy for the reference, then both sharded; now: meta-device "
          "init, rank 0 reads the checkpoint (its own dtype) and broadcasts tensor by tensor, the reference sharded in bf16. "
          "'after': what stays resident once loaded: on CPU the shards themselves live in host memory)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
