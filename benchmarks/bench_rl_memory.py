"""Per-GPU memory plan of Hi-GRPO on ShapeLLM-Omni (Qwen2.5-VL-7B + 8192 mesh codes), and its validation.

    python benchmarks/bench_rl_memory.py                 # plan table + CPU validation (about 1-2 min)
    python benchmarks/bench_rl_memory.py --no-validate   # plan only (meta device, a few seconds)
    python benchmarks/bench_rl_memory.py --device cuda   # validation on a GPU (max_memory_allocated)

1. The plan. ShapeLLM-Omni's architecture is built on the meta device from Qwen2.5-VL-7B-Instruct's
   published config (``rewardkit.rl.memory.QWEN2_5_VL_7B_CONFIG``, source cited there) with the vocabulary
   resized to 151,665 + 8192 + 2 = 159,859 tokens and an untied lm_head; its parameters are counted exactly
   (total; trainable under the default freeze = vision tower + lm_head; LoRA r=16 on q/k/v/o/gate/up/down).
   Per-GPU bytes come from ``rewardkit.rl.memory.plan_memory``, whose docstring states the formula:

     peak = params (m P / W) + AdamW (8 T / W) + reference (m P / W) [+ 4 T DDP buckets]
            + max over phases of
              training forward end: unsharded weights + saved activations + logits (gradients freed)
                  saved activations = b L [N s + ...], s = full layer (no checkpointing) or r H (checkpointed)
                  logits = a bLV + (4 + 2) bLV + 16 LV   (bf16 logits; per row the fp32 log-softmax output
                  and two bool masks saved for backward; one row's fp32 temporaries)
              training backward (logits, then layers: one recomputed layer; + grads 4 T / W),
              optimizer step (+ grads), rollout (KV cache + grads)

   at the paper's batch: G = 8 per prompt, 2 prompts per GPU (16 sequences per step and phase), the longest
   sequence = step 2 = prompt (100) + plan (2048) + reasoning (2048) + <mesh-start> + 1024 codes +
   <mesh-end> = 5222 tokens (step 1: 3174), micro_batch_size sequences per forward/backward. ``fits``
   adds ``--overhead-gb`` (CUDA context, NCCL buffers, fragmentation; default 3 GB).

2. The validation: one real Hi-GRPO optimizer step (``HiGRPOTrainer.optimize`` on synthetic rollouts of
   fixed lengths, reference copy included) of a small Qwen2.5-VL built with ``build_tiny_policy``, in a
   fresh subprocess per case. CPU: torch has no allocator statistics there, so the process's resident set
   is read: after one warm-up step (so AdamW states exist, as in a run's steady state) the baseline VmRSS
   (model, reference, AdamW states, the last gradients), the kernel's peak-RSS counter reset
   (``echo 5 > /proc/self/clear_refs``), the step run, then VmHWM; glibc's mmap threshold is fixed
   (``MALLOC_MMAP_THRESHOLD_``) so freed tensors go back to the OS and RSS follows live tensors. The
   measured step peak (VmHWM - baseline) is compared with the plan's peak minus what existed before the
   step (params + reference + AdamW + gradients). CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
   (untested here: no GPU was lent). It also counts the bytes autograd saves per decoder layer with
   ``torch.autograd.graph.saved_tensors_hooks`` against the per-layer formula.
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

from rewardkit.rl.memory import (
    GB, build_meta_model, count_model, layer_activation_bytes, plan_memory, saved_bytes_per_layer, shapellm_omni_config,
    step_lengths,
)

GPUS = {"80 GB": 80e9, "141 GB": 141e9}


def paper_plans(counts, micro_batch_sizes=(1, 2, 4), world=8):
    _, L2 = step_lengths(100, 2048, 1024)
    rows = []
    for mb in micro_batch_sizes:
        for ckpt in (True, False):
            rows.append(("FSDP x8", plan_memory(counts, strategy="fsdp", world_size=world, micro_batch_size=mb,
                                                 seq_len=L2, activation_checkpointing=ckpt, reference="copy")))
            rows.append(("DDP", plan_memory(counts, strategy="ddp", micro_batch_size=mb, seq_len=L2,
                                            activation_checkpointing=ckpt, reference="copy")))
            rows.append(("LoRA r16 DDP", plan_memory(counts, strategy="ddp", micro_batch_size=mb, seq_len=L2,
                                                     activation_checkpointing=ckpt, reference="adapter", lora=True)))
    return rows


def print_plan(counts, overhead_gb: float) -> None:
    print("ShapeLLM-Omni = Qwen2.5-VL-7B-Instruct + 8192 mesh codes (meta device, exact counts)")
    print(f"  vocabulary {counts.vocab:,}, hidden {counts.hidden}, MLP {counts.intermediate}, {counts.num_layers} layers, "
          f"{counts.num_heads} heads, kv width {counts.kv_dim}")
    print(f"  parameters: total {counts.total:,}  vision tower {counts.vision:,}  embeddings {counts.embeddings:,}  "
          f"lm_head {counts.lm_head:,}")
    print(f"  trainable (freeze {'+'.join(counts.frozen_groups)}): {counts.trainable:,}   frozen {counts.frozen:,}")
    print(f"  LoRA r={counts.lora_r} on q/k/v/o/gate/up/down: {counts.lora_trainable:,} trainable")
    print(f"  FSDP units: largest decoder layer {counts.layer:,}, root (embeddings, lm_head, norm, merger) {counts.root:,}")
    L1, L2 = step_lengths(100, 2048, 1024)
    print(f"batch per GPU: 2 prompts x G=8 = 16 sequences per step; longest sequence step 1 {L1}, step 2 {L2} tokens "
          f"(prompt 100 + plan 2048 + reasoning 2048 + 1026 mesh); bf16-mixed, fp32 master weights + AdamW, "
          f"reference copy (LoRA: adapter-disabled base)")
    print(f"per-GPU GB; 'fits' includes {overhead_gb:g} GB overhead (CUDA context, NCCL, fragmentation)\n")
    hdr = (f"{'setup':<13}{'mb':>3} {'ckpt':>4} | {'params':>6} {'grads':>6} {'optim':>6} {'ref':>5} {'bucket':>6} "
           f"{'unshrd':>6} {'acts':>6} {'logits':>6} | {'peak':>6} {'at':<22}| " + " | ".join(f"{g:>20}" for g in GPUS))
    print(hdr)
    print("-" * len(hdr))
    for name, p in paper_plans(counts):
        ph = p.phases["train_forward_end"]
        per = dict(p.persistent, grads=p.phases["optimizer_step"]["grads"])
        cells = []
        for cap in GPUS.values():
            room = p.headroom(cap, overhead_gb * GB) / GB
            cells.append(f"{('fits' if room >= 0 else 'does not fit'):>12} {room:+7.1f}")
        s = p.settings
        print(f"{name:<13}{s['micro_batch_size']:>3} {('on' if s['activation_checkpointing'] else 'off'):>4} | "
              f"{per['params'] / GB:6.1f} {per['grads'] / GB:6.1f} {per['optimizer'] / GB:6.1f} {per['reference'] / GB:5.1f} "
              f"{per.get('grad_buckets', 0) / GB:6.1f} {ph['unsharded'] / GB:6.1f} {ph['activations'] / GB:6.1f} "
              f"{ph['logits'] / GB:6.1f} | {p.peak / GB:6.1f} {p.peak_phase:<22}| " + " | ".join(cells))
    print("\ncolumns: unshrd/acts/logits at the end of the training forward; 'at' = the phase that sets the peak "
          "(train_forward_end, optimizer_step, rollout, ...); headroom = GPU - peak - overhead")


# -- validation ------------------------------------------------------------------------------------

TINY = dict(hidden_size=384, num_layers=4, num_heads=6, num_kv_heads=2, codebook_size=8192, tokens_per_object=512)
VAL = dict(group_size=4, prompts_per_step=1, reasoning=48, context=24, micro_batch_size=4)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _synthetic_groups(trainer, n_prompts: int, G: int, context: int, reasoning: int):
    import numpy as np

    from rewardkit.rl.policy import PHASE_FORCED, PHASE_MESH, PHASE_TEXT, StepRollout
    from rewardkit.rl.rollout import _Group

    pol = trainer.policy
    v = pol.vocab
    M = pol.tokens_per_object
    rng = np.random.default_rng(0)
    words = [i for i in range(3, int(v.code_ids.min()))]

    def step(ctx_len: int, r_len: int) -> StepRollout:
        ctx = rng.choice(words, size=ctx_len).tolist()
        codes = rng.integers(0, v.codebook_size, size=M)
        comp = rng.choice(words, size=r_len).tolist() + [v.mesh_start] + v.code_ids[codes].tolist() + [v.mesh_end]
        phases = [PHASE_TEXT] * (r_len + 1) + [PHASE_MESH] * M + [PHASE_FORCED]
        return StepRollout(ctx, comp, phases, "", codes, M)

    groups = []
    for p in range(n_prompts):
        # lengths differ inside a micro-batch (padding, so attention runs with a mask as in real rollouts)
        s1 = [step(context, reasoning - i) for i in range(G)]
        s2 = [step(context + reasoning, reasoning - i) for i in range(G)]
        groups.append(_Group(f"p{p}", s1, s2, [None] * G, [None] * G, rng.normal(size=G), rng.normal(size=G), {}, {}))
    return groups


def measure(args: dict) -> dict:
    """One optimizer step of the tiny policy in this process; returns measured and predicted bytes."""
    import torch

    from rewardkit.rl.policy import RolloutBatch
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    torch.set_num_threads(1)
    device = args["device"]
    out = Path(args["dir"])
    cfg = HiGRPOConfig(
        policy_path=str(out / "policy"), tokens_per_object=TINY["tokens_per_object"],
        shape_tokenizer={"type": "voxel_blocks", "resolution": 16, "block": 2},
        prompts=["a cube"], rewards_high=[{"name": "occ", "builtin": "occupied_fraction"}],
        rewards_low=[{"name": "occ", "builtin": "occupied_fraction"}],
        group_size=VAL["group_size"], prompts_per_step=VAL["prompts_per_step"], micro_batch_size=VAL["micro_batch_size"],
        accelerator="cpu" if device == "cpu" else "cuda", devices=1, precision=args["precision"],
        activation_checkpointing=args["ckpt"], output_dir=str(out / f"run-{args['ckpt']}"), render=False,
        eval_group_size=0, overlap_rewards=False, num_threads=1,
    )
    trainer = HiGRPOTrainer(cfg)
    model = trainer._unwrapped()
    groups = _synthetic_groups(trainer, VAL["prompts_per_step"], VAL["group_size"], VAL["context"], VAL["reasoning"])
    seqs = [s for g in groups for s in g.step2][: VAL["micro_batch_size"]]
    seq_len = max(len(s.context_ids) + len(s.completion_ids) for s in seqs)
    saved_layer = None
    if not args["ckpt"]:
        b = RolloutBatch.collate(seqs, trainer.policy.vocab.pad_id).to(trainer.fabric.device)
        with trainer.fabric.autocast():
            saved_layer = saved_bytes_per_layer(model, b.input_ids, b.attention_mask) / (b.input_ids.numel())
        del b
    import gc

    trainer.optimize(groups)  # warm-up: AdamW states exist from here on (the steady state of a run)
    gc.collect()
    if device == "cpu":
        base = _rss_kb("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
        trainer.optimize(groups)
        peak = _rss_kb("VmHWM") * 1024
        measured = peak - base
    else:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        trainer.optimize(groups)
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - base
    counts = count_model(model)
    plan = plan_memory(counts, strategy="single", world_size=1, precision=trainer.precision,
                       micro_batch_size=VAL["micro_batch_size"], seq_len=seq_len,
                       activation_checkpointing=args["ckpt"], reference="copy", foreach_optimizer=device != "cpu")
    before = plan.persistent_total + plan.phases["optimizer_step"]["grads"]  # params, reference, AdamW, grads
    mixed = trainer.precision in ("bf16-mixed", "16-mixed")
    a = 2 if mixed else 4
    return {
        "ckpt": args["ckpt"], "precision": trainer.precision, "seq_len": seq_len, "params": counts.total,
        "measured_step": measured, "predicted_step": plan.peak - before, "predicted_phase": plan.peak_phase,
        "saved_layer_per_token": saved_layer,
        "formula_layer_per_token": layer_activation_bytes(counts, a, 4, seq_len),
    }


def validate(device: str, precision: str) -> list[dict]:
    from rewardkit.rl.policy import build_tiny_policy

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_policy(Path(tmp) / "policy", ["a", "cube", "ball", "round", "flat", "tall", "with", "legs"],
                          TINY["codebook_size"], TINY["tokens_per_object"], arch="qwen2_5_vl",
                          hidden_size=TINY["hidden_size"], num_layers=TINY["num_layers"], num_heads=TINY["num_heads"],
                          num_kv_heads=TINY["num_kv_heads"], max_positions=4096)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="1", OMP_NUM_THREADS="1")
        for ckpt in (False, True):
            spec = json.dumps({"device": device, "precision": precision, "ckpt": ckpt, "dir": tmp})
            r = subprocess.run([sys.executable, __file__, "--_measure", spec], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"measurement failed:\n{r.stderr[-3000:]}")
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return results


def print_validation(results: list[dict], device: str) -> None:
    r0 = results[0]
    print(f"\nValidation on {device}: one Hi-GRPO optimizer step of a tiny Qwen2.5-VL ({r0['params']:,} parameters: "
          f"hidden {TINY['hidden_size']}, {TINY['num_layers']} layers, {TINY['num_heads']} heads / {TINY['num_kv_heads']} kv, "
          f"vocabulary with {TINY['codebook_size']} codes), {r0['precision']}, G={VAL['group_size']}, "
          f"micro-batch {VAL['micro_batch_size']}, longest sequence {r0['seq_len']} tokens, reference copy")
    print(f"{'activation ckpt':<16} {'predicted MB':>13} {'measured MB':>12} {'measured/pred':>14}  peak phase (plan)")
    for r in results:
        print(f"{('on' if r['ckpt'] else 'off'):<16} {r['predicted_step'] / 1e6:13.1f} {r['measured_step'] / 1e6:12.1f} "
              f"{r['measured_step'] / r['predicted_step']:14.2f}  {r['predicted_phase']}")
    for r in results:
        if r["saved_layer_per_token"]:
            print(f"bytes autograd saves per decoder layer per token: counted {r['saved_layer_per_token']:.0f}, "
                  f"formula {r['formula_layer_per_token']:.0f} (ratio {r['saved_layer_per_token'] / r['formula_layer_per_token']:.2f})")
    if device == "cpu":
        print("(CPU: step peak = VmHWM - VmRSS before the second step; params, reference, AdamW states and the "
              "previous step's gradients are in that baseline, and excluded from the prediction too)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default=None, help="validation precision (default: 32-true on CPU, bf16-mixed on CUDA)")
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--overhead-gb", type=float, default=3.0)
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._measure:
        print(json.dumps(measure(json.loads(a._measure))))
        return 0
    counts = count_model(build_meta_model(shapellm_omni_config()))
    print_plan(counts, a.overhead_gb)
    if not a.no_validate:
        precision = a.precision or ("32-true" if a.device == "cpu" else "bf16-mixed")
        print_validation(validate(a.device, precision), a.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
