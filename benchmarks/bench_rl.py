"""Hi-GRPO throughput figures (prints, does not assert).

    python benchmarks/bench_rl.py                 # demo policy: rollout / update seconds per step
    python benchmarks/bench_rl.py --vqvae         # full-size ShapeLLM-Omni VQVAE (random weights) encode/decode
    python benchmarks/bench_rl.py --device cuda   # the same on a GPU
    python benchmarks/bench_rl.py --overlap       # demo + learned-scorer reward terms: overlap_rewards on vs off
        [--backbone rk-small] [--camera orbit6] [--render-size 224]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bench_steps(steps: int, device: str, threads: int) -> None:
    from rewardkit.rl.trainer import load_config, HiGRPOTrainer

    out = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    cfg = load_config(Path(__file__).parents[1] / "rewardkit/rl/configs/demo.json", {
        "policy_path": str(out / "init"), "output_dir": str(out / "run"), "eval_group_size": 0,
        "accelerator": device, "num_threads": threads, "save_every": 0,
    })
    cfg.warm_start.steps = 50
    t = time.time()
    trainer = HiGRPOTrainer(cfg)
    print(f"setup + 50 warm-start steps: {time.time() - t:.1f}s")
    rows = [trainer.train_step() for _ in range(steps)]
    roll = np.mean([r["seconds/rollout"] for r in rows[1:]])
    upd = np.mean([r["seconds/update"] for r in rows[1:]])
    n = cfg.group_size * cfg.prompts_per_step
    print(json.dumps({
        "device": device, "samples_per_step": n, "tokens_per_object": cfg.tokens_per_object,
        "rollout_s_per_step": round(float(roll), 3), "update_s_per_step": round(float(upd), 3),
        "two_step_samples_per_s": round(n / float(roll + upd), 1),
    }, indent=2))


def bench_overlap(steps: int, device: str, threads: int, backbone: str, camera: str, render_size: int) -> None:
    """Seconds per rollout of the demo config plus a learned scorer set (random init, exported the way
    benchmarks/bench_scoring.py does: global stage in the global step's reward, local stage in the local step's), with
    ``overlap_rewards`` on and off, alternating step by step in one process (same policy, same load)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scoring import export_scorers

    from rewardkit.rl.trainer import load_config, HiGRPOTrainer

    out = Path(tempfile.mkdtemp(prefix="bench-rl-overlap-"))
    scorers = str(export_scorers(out, backbone, camera, render_size))
    args = {"device": device, "empty_score": 0.0}
    cfg = load_config(Path(__file__).parents[1] / "rewardkit/rl/configs/demo.json", {
        "policy_path": str(out / "init"), "output_dir": str(out / "run"), "eval_group_size": 0,
        "accelerator": device, "num_threads": threads, "save_every": 0,
    })
    cfg.rewards_global = cfg.rewards_global + [{"name": "scorer_global", "scorer": scorers, "args": {**args, "stage": "global"}}]
    cfg.rewards_local = cfg.rewards_local + [{"name": "scorer_local", "scorer": scorers, "args": {**args, "stage": "local"}}]
    cfg.warm_start.steps = 50
    trainer = HiGRPOTrainer(cfg)
    model, gen_s = trainer.policy.model, [0.0]
    inner = model.generate

    def timed_generate(*a, **k):  # the time generation takes, i.e. what overlapping can hide at most
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            gen_s[0] += time.perf_counter() - t

    model.generate = timed_generate
    trainer.cfg.overlap_rewards = False
    trainer.train_step()  # warm-up: model loads, GL context, first-call allocations
    secs: dict[bool, list[float]] = {True: [], False: []}
    gens: list[float] = []
    for i in range(2 * steps):
        on = i % 2 == 0
        trainer.cfg.overlap_rewards = on
        gen_s[0] = 0.0
        secs[on].append(trainer.train_step()["seconds/rollout"])
        if not on:
            gens.append(gen_s[0])
    on, off = float(np.mean(secs[True])), float(np.mean(secs[False]))
    print(json.dumps({
        "device": device, "threads": threads, "samples_per_step": cfg.group_size * cfg.prompts_per_step,
        "scorer": f"{backbone} {camera} @ {render_size}px (global stage rewards the global step, local the local step)",
        "steps_each": steps, "rollout_s_overlap_on": round(on, 3), "rollout_s_overlap_off": round(off, 3),
        "on_over_off": round(on / off, 3),
        "generate_s_per_rollout_off": round(float(np.mean(gens)), 3),  # both steps; step 2's half is the bound
    }, indent=2))


def bench_vqvae(device: str, batch: int) -> None:
    from rewardkit.demo.shapes import DEMO_SHAPES
    from rewardkit.rl.tokenizers.vqvae import ShapeVQVAE, VQVAETokenizer

    torch.manual_seed(0)
    t = time.time()
    model = ShapeVQVAE()
    print(f"init full-size VQVAE ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params): {time.time() - t:.1f}s")
    with tempfile.TemporaryDirectory() as d:
        torch.save(model.state_dict(), Path(d) / "3DVQVAE.bin")
        t = time.time()
        tok = VQVAETokenizer.from_pretrained(Path(d) / "3DVQVAE.bin", device=device)
        print(f"load 3DVQVAE.bin: {time.time() - t:.1f}s")
    occ = np.stack([DEMO_SHAPES[n].occupancy(64) for n in list(DEMO_SHAPES)[:batch]])
    tok.batch_size = batch

    def timed(name, fn):
        t = time.time()
        res = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        print(f"{name} {batch} x 64^3: {time.time() - t:.2f}s")
        return res

    codes = timed("encode", lambda: tok.encode(occ))
    assert codes.shape == (batch, 1024) and codes.max() < 8192
    timed("encode (warm)", lambda: tok.encode(occ))
    dec = timed("decode", lambda: tok.decode(codes))
    timed("decode (warm)", lambda: tok.decode(codes))
    assert dec.shape == (batch, 64, 64, 64)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vqvae", action="store_true")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--overlap", action="store_true", help="overlap_rewards on vs off with learned-scorer terms")
    ap.add_argument("--backbone", default="rk-small")
    ap.add_argument("--camera", default="orbit6")
    ap.add_argument("--render-size", type=int, default=224)
    a = ap.parse_args()
    if a.overlap:
        bench_overlap(a.steps, a.device, a.threads, a.backbone, a.camera, a.render_size)
    elif a.vqvae:
        bench_vqvae(a.device, a.batch)
    else:
        bench_steps(a.steps, a.device, a.threads)
