"""Hi-GRPO throughput figures (prints, does not assert).

    python benchmarks/bench_rl.py                 # demo policy: rollout / update seconds per step
    python benchmarks/bench_rl.py --vqvae         # full-size ShapeLLM-Omni VQVAE (random weights) encode/decode
    python benchmarks/bench_rl.py --device cuda   # the same on a GPU
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


def bench_vqvae(device: str, batch: int) -> None:
    from rewardkit.rl.shapes import DEMO_SHAPES
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
    a = ap.parse_args()
    if a.vqvae:
        bench_vqvae(a.device, a.batch)
    else:
        bench_steps(a.steps, a.device, a.threads)
