"""Step time and peak memory of a Hi-GRPO update on a ~0.5B Qwen2-architecture policy: DDP vs FSDP,
bf16-mixed, with and without activation checkpointing (the GPU check of issue 14).

    python benchmarks/bench_rl_gpu.py                        # on every visible GPU (needs CUDA)
    python benchmarks/bench_rl_gpu.py --devices 1 --json out.json
    python benchmarks/bench_rl_gpu.py --tiny                 # CPU, 2 gloo processes, a tiny Qwen2: the code path
                                                             # only (a minute or two on a busy machine)

The policy is a random-init Qwen2 model written by ``build_tiny_policy(arch="qwen2")`` with
Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 kv heads, MLP 4864, vocabulary padded to
151,936, tied embeddings) plus 8192 ``<meshN>`` codes: about 0.49B parameters, no download. Each case runs
in fresh processes (Fabric's launcher, one per device) through the trainer's own code: ``HiGRPOTrainer``
with ``strategy`` ddp / fsdp, ``precision: bf16-mixed`` (fp32 master weights and AdamW states),
``activation_checkpointing`` off / on, the reference as a frozen copy (sharded under FSDP), and
``HiGRPOTrainer.optimize`` -- the full update of one Hi-GRPO step (reference log-probs, both phases'
forward/backward per micro-batch, gradient clipping, AdamW) -- on synthetic rollouts of fixed lengths
(prompt + reasoning + <mesh-start> + mesh codes + <mesh-end>; every sequence of a phase has the same length,
as in bench_rl_memory.py's plan; padding is tested in tests/test_rl_policy.py). Generation is not timed (it is the same Hugging Face ``generate`` under
both strategies, with ``synced_gpus`` under FSDP; see docs/hi-grpo.md).

Per case: seconds per update (median of ``--steps`` after ``--warmup`` untimed ones), tokens per second
(trained tokens of both phases, all ranks), and peak memory per rank, the maximum over ranks: on CUDA
``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over the whole run (setup included); on CPU the
process's peak resident set (VmHWM), which also counts the Python/torch runtime. ``--json PATH`` writes the
rows. A case that fails (e.g. out of memory) is reported in its row and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Qwen2.5-0.5B's text architecture (its config.json), random init
POLICY_05B = dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                  vocab_size=151936, tie_word_embeddings=True, codebook_size=8192, max_positions=4096)
POLICY_TINY = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                   vocab_size=None, tie_word_embeddings=True, codebook_size=256, max_positions=512)
# per-device batch: prompts x G sequences per phase; lengths of the synthetic rollouts
BATCH_GPU = dict(group_size=8, prompts_per_step=1, context=100, reasoning=512, tokens_per_object=512, micro_batch_size=4)
BATCH_TINY = dict(group_size=4, prompts_per_step=1, context=8, reasoning=8, tokens_per_object=64, micro_batch_size=2)
WORDS = ["a", "cube", "ball", "round", "flat", "tall", "with", "legs"]


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_case(spec: dict) -> None:
    """One case in this process (one rank of it; Fabric's launcher starts the others): writes
    ``rank{r}.json`` into ``spec['dir']``."""
    import torch

    from benchmarks.bench_rl_memory import _synthetic_groups
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    torch.set_num_threads(spec["threads"])
    cuda = spec["accelerator"] == "cuda"
    b = spec["batch"]
    res = {8: 4, 64: 8, 512: 16, 4096: 32}[b["tokens_per_object"]]  # voxel blocks of 2: (res / 2)^3 codes
    cfg = HiGRPOConfig(
        policy_path=spec["policy"], tokens_per_object=b["tokens_per_object"],
        shape_tokenizer={"type": "voxel_blocks", "resolution": res, "block": 2},
        prompts=["a cube"], rewards_global=[{"name": "occ", "builtin": "occupied_fraction"}],
        rewards_local=[{"name": "occ", "builtin": "occupied_fraction"}],
        group_size=b["group_size"], prompts_per_step=b["prompts_per_step"], micro_batch_size=b["micro_batch_size"],
        accelerator=spec["accelerator"], devices=spec["devices"], strategy=spec["strategy"],
        precision=spec["precision"], activation_checkpointing=spec["ckpt"], output_dir=spec["dir"], render=False,
        eval_group_size=0, overlap_rewards=False, num_threads=spec["threads"], reference="copy",
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = HiGRPOTrainer(cfg)
    groups = _synthetic_groups(trainer, b["prompts_per_step"], b["group_size"], b["context"], b["reasoning"])
    tokens = sum(len(s.completion_ids) for g in groups for s in (*g.steps["global"].sequences, *g.steps["local"].sequences)) * trainer.fabric.world_size
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        trainer.fabric.barrier()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.optimize(groups)
        if cuda:
            torch.cuda.synchronize()
        trainer.fabric.barrier()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    out = {"rank": trainer.fabric.global_rank, "world_size": trainer.fabric.world_size, "times": times,
           "trained_tokens": tokens, "precision": trainer.precision,
           "params": sum(p.numel() for p in trainer.unwrapped_model.parameters()) if not trainer.sharded else None}
    if trainer.sharded:  # the full count: local shards summed over ranks
        n = torch.tensor(float(sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
                                   for p in trainer.model.parameters())), device=trainer.fabric.device)
        out["params"] = int(trainer.fabric.all_reduce(n, reduce_op="sum").item())
    if cuda:
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
        out["peak_reserved"] = torch.cuda.max_memory_reserved()
    else:
        out["peak_rss"] = _vm_kb("VmHWM") * 1024
    Path(spec["dir"], f"rank{out['rank']}.json").write_text(json.dumps(out))


def measure(spec: dict, timeout: float) -> dict:
    """Run one case in fresh processes and reduce the ranks' figures to one row."""
    row = {"strategy": spec["strategy"], "activation_checkpointing": spec["ckpt"], "devices": spec["devices"],
           "precision": spec["precision"]}
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_case", json.dumps(spec)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(row, error=f"timed out after {timeout:g} s")
    ranks = [json.loads(p.read_text()) for p in sorted(Path(spec["dir"]).glob("rank*.json"))]
    if r.returncode != 0 or len(ranks) != spec["devices"]:
        lines = [ln for ln in (r.stderr or "").strip().splitlines() if ln.strip()]
        return dict(row, error=(lines[-1] if lines else f"exit code {r.returncode}")[:300])
    times = [max(t) for t in zip(*(x["times"] for x in ranks))]  # a step ends when the slowest rank ends
    sec = statistics.median(times)
    row.update(params=ranks[0]["params"], precision=ranks[0]["precision"], s_per_update=sec,
               trained_tokens=ranks[0]["trained_tokens"], tokens_per_s=ranks[0]["trained_tokens"] / sec)
    for key in ("peak_allocated", "peak_reserved", "peak_rss"):
        if key in ranks[0]:
            row[key] = max(x[key] for x in ranks)
    return row


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    mem = "peak_allocated" if any("peak_allocated" in r for r in rows) else "peak_rss"
    cols = ("peak alloc GB", "peak resv GB") if mem == "peak_allocated" else ("peak RSS GB", "")
    print(f"{'strategy':<9}{'act ckpt':>9}{'devices':>8}{'s / update':>12}{'tokens / s':>12}{cols[0]:>15}{cols[1]:>14}")
    for r in rows:
        head = f"{r['strategy']:<9}{('on' if r['activation_checkpointing'] else 'off'):>9}{r['devices']:>8}"
        if "error" in r:
            print(head + f"   failed: {r['error']}")
            continue
        second = f"{r['peak_reserved'] / 1e9:14.2f}" if mem == "peak_allocated" else ""
        print(head + f"{r['s_per_update']:12.3f}{r['tokens_per_s']:12.0f}{r[mem] / 1e9:15.2f}" + second)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, gloo, a tiny Qwen2 and batch: checks the code path")
    ap.add_argument("--devices", type=int, default=None, help="processes per case (default: all GPUs; --tiny: 2)")
    ap.add_argument("--strategies", default="ddp,fsdp")
    ap.add_argument("--checkpointing", default="off,on", help="activation checkpointing cases: off,on")
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--steps", type=int, default=None, help="timed updates per case (default 3; --tiny 1)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument("--reasoning", type=int, default=None, help="reasoning tokens per synthetic rollout")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per case")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._case:
        run_case(json.loads(a._case))
        return 0
    import torch

    if not a.tiny and not torch.cuda.is_available():
        print("bench_rl_gpu.py needs a CUDA GPU (or --tiny for the CPU code-path check)", file=sys.stderr)
        return 2
    accelerator = "cpu" if a.tiny else "cuda"
    devices = a.devices or (2 if a.tiny else torch.cuda.device_count())
    arch = dict(POLICY_TINY if a.tiny else POLICY_05B)
    batch = dict(BATCH_TINY if a.tiny else BATCH_GPU)
    if a.micro_batch_size:
        batch["micro_batch_size"] = a.micro_batch_size
    if a.reasoning:
        batch["reasoning"] = a.reasoning
    strategies = [s for s in a.strategies.split(",") if s]
    ckpts = [{"on": True, "off": False}[c] for c in a.checkpointing.split(",") if c]
    steps = a.steps or (1 if a.tiny else 3)
    from rewardkit.rl.policy import build_tiny_policy

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy"
        codebook = arch.pop("codebook_size")
        build_tiny_policy(policy, WORDS, codebook, batch["tokens_per_object"], arch="qwen2", **arch)
        for strategy in strategies:
            for ckpt in ckpts:
                case = Path(tmp) / f"{strategy}-{int(ckpt)}"
                case.mkdir()
                spec = dict(policy=str(policy), dir=str(case), accelerator=accelerator, devices=devices,
                            strategy=strategy, ckpt=ckpt, precision=a.precision, batch=batch, steps=steps,
                            warmup=a.warmup, threads=a.threads)
                rows.append(measure(spec, a.timeout))
    n_seq = batch["group_size"] * batch["prompts_per_step"]
    longest = batch["context"] + 2 * batch["reasoning"] + batch["tokens_per_object"] + 2
    params = next((r["params"] for r in rows if "params" in r), None)
    header = (f"Hi-GRPO update, random-init Qwen2 ({'tiny' if a.tiny else '~0.5B'}: {params or 0:,} parameters, hidden "
              f"{arch['hidden_size']}, {arch['num_layers']} layers), {a.precision}, {accelerator} x {devices}; per device "
              f"{n_seq} sequences per phase (G={batch['group_size']}), longest {longest} tokens, micro-batch "
              f"{batch['micro_batch_size']}, reference copy; median of {steps} update(s) after {a.warmup} warm-up")
    print_table(rows, header)
    if a.json:
        Path(a.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
