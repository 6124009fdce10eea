"""Per-GPU memory plan of Hi-GRPO on ShapeLLM-Omni (Qwen2.5-VL-7B + 8192 mesh codes), and its validation.

    python benchmarks/bench_rl_memory.py                 # plan table + CPU validation (about 1-2 min)
    python benchmarks/bench_rl_memory.py --no-validate   # plan only (meta device, a few seconds)
    python benchmarks/bench_rl_memory.py --device cuda   # validation on a GPU (max_memory_allocated)

1. The plan. ShapeLLM-Omni's architecture is built on the meta device from Qwen2.5-VL-7B-Instruct's
   published config (``rewardkit.plan.memory.QWEN2_5_VL_7B_CONFIG``, source cited there) with the vocabulary
   resized to 151,665 + 8192 + 2 = 159,859 tokens and an untied lm_head; its parameters are counted exactly
   (total; trainable under the default freeze = vision tower + lm_head; LoRA r=16 on q/k/v/o/gate/up/down).
   Per-GPU bytes come from ``rewardkit.plan.memory.plan_memory``, whose docstring states the formula:

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

from rewardkit.plan.memory import GB, build_meta_model, count_model, plan_memory, shapellm_omni_config, step_lengths

GPUS = {"80 GB": 80e9, "141 GB": 141e9}


def paper_plans(counts, micro_batch_sizes=(1, 2, 4), world=8):
    _, L2 = step_lengths(100, 2048, 1024)
    kw = dict(seq_len=L2, scored_len=L2 - 100 - 2048, accumulation=2 * 16)
    rows = []
    for mb in micro_batch_sizes:
        kw["accumulation"] = 2 * (16 // mb)
        for ckpt in (True, False):
            rows.append(("FSDP x8", plan_memory(counts, strategy="fsdp", world_size=world, micro_batch_size=mb,
                                                 activation_checkpointing=ckpt, reference="copy", **kw)))
            rows.append(("DDP", plan_memory(counts, strategy="ddp", micro_batch_size=mb, activation_checkpointing=ckpt,
                                            reference="copy", **kw)))
            rows.append(("LoRA r16 DDP", plan_memory(counts, strategy="ddp", micro_batch_size=mb,
                                                     activation_checkpointing=ckpt, reference="adapter", lora=True, **kw)))
    return rows


def _row(name: str, p, overhead_gb: float) -> str:
    ph = p.phases[p.peak_phase]
    per = dict(p.persistent, grads=p.phases["optimizer_step"]["grads"])
    cells = []
    for cap in GPUS.values():
        room = p.headroom(cap, overhead_gb * GB) / GB
        cells.append(f"{('fits' if room >= 0 else 'does not fit'):>12} {room:+7.1f}")
    s = p.settings
    return (f"{name:<13}{s['micro_batch_size']:>3} {('on' if s['activation_checkpointing'] else 'off'):>4} | "
            f"{per['params'] / GB:6.1f} {per['grads'] / GB:6.1f} {per['optimizer'] / GB:6.1f} {per['reference'] / GB:5.1f} "
            f"{per.get('grad_buckets', 0) / GB:6.1f} {ph.get('unsharded', 0) / GB:6.1f} {ph.get('activations', 0) / GB:6.1f} "
            f"{ph.get('logprobs', 0) / GB:6.1f} {ph.get('vllm_engine', 0) / GB:5.1f} | {p.peak / GB:6.1f} "
            f"{p.peak_phase:<23}| " + " | ".join(cells))


HEADER = (f"{'setup':<13}{'mb':>3} {'ckpt':>4} | {'params':>6} {'grads':>6} {'optim':>6} {'ref':>5} {'bucket':>6} "
          f"{'unshrd':>6} {'acts':>6} {'logp':>6} {'vllm':>5} | {'peak':>6} {'at':<23}| " + " | ".join(f"{g:>20}" for g in GPUS))


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
          f"(prompt 100 + plan 2048 + reasoning 2048 + 1026 mesh; {L2 - 2148} scored); bf16-mixed, fp32 master weights "
          f"+ AdamW, reference copy (bf16, sharded under FSDP; LoRA: adapter-disabled base); log-probs in chunks of 512 "
          f"scored tokens; HF rollouts")
    print(f"per-GPU GB; 'fits' includes {overhead_gb:g} GB overhead (CUDA context, NCCL, fragmentation)\n")
    print(HEADER)
    print("-" * len(HEADER))
    for name, p in paper_plans(counts):
        print(_row(name, p, overhead_gb))
    print("\ncolumns: unshrd/acts/logp/vllm at the phase that sets the peak ('at'); grads from the second micro-batch "
          "of an update on; headroom = GPU - peak - overhead")


def print_config_plan(counts, overhead_gb: float) -> None:
    """The shipped paper config's plan (its own micro-batch, checkpointing and rollout settings)."""
    from rewardkit.plan.memory import plan_for_config
    from rewardkit.rl.trainer import load_config

    path = Path(__file__).resolve().parents[1] / "rewardkit" / "rl" / "configs" / "ar3d_r1_8x80gb.yaml"
    cfg = load_config(path)
    ro = cfg.rollout
    print(f"\n{path.name}: micro_batch_size {cfg.micro_batch_size}, activation_checkpointing "
          f"{cfg.activation_checkpointing}, logprob_chunk_tokens {cfg.logprob_chunk_tokens}, rollout.backend "
          f"{ro.backend} (gpu_memory_utilization {ro.gpu_memory_utilization}, sleep_level {ro.sleep_level})")
    print(HEADER)
    print("-" * len(HEADER))
    now = plan_for_config(cfg, counts)
    print(_row("as shipped", now, overhead_gb))
    print(_row("old accum.", plan_for_config(cfg, counts, fsdp_sync_every_micro_batch=False), overhead_gb))
    for phase in now.phases:
        print(f"  {phase:<24} {(now.persistent_total + now.phase_total(phase)) / GB:6.1f} GB  "
              + ", ".join(f"{k} {v / GB:.2f}" for k, v in now.phases[phase].items() if v))
    print(f"  persistent {now.persistent_total / GB:.1f} GB: " + ", ".join(f"{k} {v / GB:.2f}" for k, v in now.persistent.items()))
    print("('old accum.': the same config with FSDP's gradient reduce-scatter skipped until the last micro-batch, as the "
          "trainer did before: unsharded fp32 gradients of every trainable parameter between micro-batches)")


# -- validation ------------------------------------------------------------------------------------

# a 50.9M-parameter Qwen2 (untied output layer, vocabulary padded to 32,000), FSDP over 2 gloo processes
MODEL = dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=2, intermediate_size=1536, vocab_size=32000,
             codebook_size=1024, tokens_per_object=64, max_positions=1024)
MODEL_SMOKE = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=4096,
                   codebook_size=256, tokens_per_object=8, max_positions=256)
SEQ = dict(context=16, reasoning=16)
GRID = [(mb, acc) for mb in (1, 2) for acc in (1, 4)]  # micro-batch x micro-batches per Hi-GRPO phase


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _synthetic_groups(trainer, n_prompts: int, G: int, context: int, reasoning: int):
    import numpy as np

    from rewardkit.rl.policy import PHASE_FORCED, PHASE_MESH, PHASE_TEXT, StepRollout
    from rewardkit.rl import GroupRollout, StepSamples

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
        # every sequence of a phase has the same length (the plan's L; padding is checked elsewhere)
        s1 = [step(context, reasoning) for i in range(G)]
        s2 = [step(context + reasoning, reasoning) for i in range(G)]
        groups.append(GroupRollout(prompt=f"p{p}", steps={
            "global": StepSamples(sequences=s1, meshes=[None] * G, reward=rng.normal(size=G)),
            "local": StepSamples(sequences=s2, meshes=[None] * G, reward=rng.normal(size=G))}))
    return groups


def measure(args: dict) -> None:
    """Runs in each of the 2 FSDP processes (Fabric launches them): for each (micro-batch, accumulation)
    one Hi-GRPO optimizer step of the trainer's own code on synthetic rollouts, the peak resident set above
    the pre-step baseline against the plan; prints one RESULT line per configuration and rank."""
    import gc

    import torch

    from rewardkit.plan.memory import count_model, plan_memory
    from rewardkit.rl.policy import MeshPolicy
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    torch.set_num_threads(1)
    out = Path(args["dir"])
    spec = MODEL_SMOKE if args["smoke"] else MODEL
    cfg = HiGRPOConfig.from_dict(dict(
        policy_path=str(out / "policy"), tokens_per_object=spec["tokens_per_object"],
        shape_tokenizer={"type": "voxel_blocks", "resolution": 8 if spec["tokens_per_object"] == 64 else 4, "block": 2},
        prompts=["a cube"], rewards_global=[{"name": "occ", "builtin": "occupied_fraction"}],
        rewards_local=[{"name": "occ", "builtin": "occupied_fraction"}], group_size=1, prompts_per_step=1,
        micro_batch_size=1, accelerator="cpu", devices=2, strategy="fsdp", precision=args["precision"],
        activation_checkpointing=args["ckpt"], output_dir=str(out / f"run-{args['ckpt']}"), render=False,
        eval_group_size=0, overlap_rewards=False, num_threads=1, dynamic_sampling=False, max_grad_norm=1.0,
        freeze=["embeddings", "lm_head"] if args.get("freeze_root") else None,
    ))
    trainer = HiGRPOTrainer(cfg)
    rank = trainer.fabric.global_rank
    counts = count_model(MeshPolicy.from_pretrained(out / "policy", meta=True).model, cfg.freeze)
    runs = [(mb, acc, True) for mb, acc in args["grid"]] + [(mb, acc, False) for mb, acc in args.get("old", [])]
    for i, (mb, acc, sync) in enumerate(runs):
        G = mb * acc
        cfg.micro_batch_size, cfg.group_size = mb, G
        groups = _synthetic_groups(trainer, 1, G, SEQ["context"], SEQ["reasoning"])
        trainer.sharded = sync  # False: the previous loop (no reduce-scatter until the last micro-batch)
        if i == 0:
            trainer.optimize(groups)  # warm-up: AdamW states exist from here on (a run's steady state)
        gc.collect()
        trainer.fabric.barrier()
        base = _rss_kb("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
        trainer.optimize(groups)
        measured = _rss_kb("VmHWM") * 1024 - base
        trainer.sharded = True
        L = max(len(s.context_ids) + len(s.completion_ids) for s in groups[0].steps["local"].sequences)
        scored = max(len(s.completion_ids) for s in groups[0].steps["local"].sequences)
        plan = plan_memory(counts, strategy="fsdp", world_size=2, precision=trainer.precision, micro_batch_size=mb,
                           seq_len=L, scored_len=scored, activation_checkpointing=args["ckpt"], reference="copy",
                           logprob_chunk=cfg.logprob_chunk_tokens, accumulation=2 * acc,
                           fsdp_sync_every_micro_batch=sync, foreach_optimizer=False)
        before = plan.persistent_total + plan.phases["optimizer_step"]["grads"]  # in the baseline already
        train = {k: v for k, v in plan.phases.items() if k != "rollout"}
        phase = max(train, key=plan.phase_total)
        row = json.dumps({
            "rank": rank, "ckpt": args["ckpt"], "micro_batch": mb, "accumulation": acc, "sync": sync,
            "precision": trainer.precision, "seq_len": L, "frozen": cfg.freeze or [], "scored": scored, "params": counts.total,
            "measured": measured, "predicted": plan.persistent_total + plan.phase_total(phase) - before,
            "phase": phase, "terms": {k: v for k, v in plan.phases[phase].items() if v}})
        print("RESULT " + row, flush=True)
        with open(out / f"results-{args['ckpt']}-{rank}.jsonl", "a") as f:  # the ranks share stdout: lines may mix
            f.write(row + "\n")


def validate(precision: str, smoke: bool = False, freeze_root: bool = False) -> list[dict]:
    """The grid on 2 gloo processes: one launch per activation-checkpointing setting; returns one row per
    configuration (the larger rank's measurement)."""
    from rewardkit.rl.policy import build_tiny_policy

    spec = MODEL_SMOKE if smoke else MODEL
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_policy(Path(tmp) / "policy", ["a", "cube", "ball", "round", "flat", "tall", "with", "legs"],
                          spec["codebook_size"], spec["tokens_per_object"], arch="qwen2",
                          hidden_size=spec["hidden_size"], num_layers=spec["num_layers"], num_heads=spec["num_heads"],
                          num_kv_heads=spec["num_kv_heads"], intermediate_size=spec["intermediate_size"],
                          vocab_size=spec["vocab_size"], max_positions=spec["max_positions"])
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", MALLOC_ARENA_MAX="1",
                   OMP_NUM_THREADS="1")
        for ckpt in (False, True):
            grid = GRID[:1] if smoke else GRID
            old = [(1, 4)] if ckpt and not smoke else []
            arg = json.dumps({"precision": precision, "ckpt": ckpt, "dir": tmp, "smoke": smoke, "grid": grid, "old": old,
                              "freeze_root": freeze_root})
            r = subprocess.run([sys.executable, __file__, "--_measure", arg], env=env, capture_output=True, text=True,
                               cwd=tmp)
            if r.returncode != 0:
                raise RuntimeError(f"measurement failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
            got = [json.loads(line) for rank in (0, 1)
                   for line in (Path(tmp) / f"results-{ckpt}-{rank}.jsonl").read_text().splitlines()]
            for key in dict.fromkeys((g["micro_batch"], g["accumulation"], g["sync"]) for g in got):
                same = [g for g in got if (g["micro_batch"], g["accumulation"], g["sync"]) == key]
                rows.append(max(same, key=lambda g: g["measured"]))
    return rows


def print_validation(rows: list[dict]) -> None:
    r0 = rows[0]
    spec = MODEL if r0["params"] > 10e6 else MODEL_SMOKE
    print(f"\nValidation: FSDP over 2 gloo processes (CPU), {r0['precision']}, a Qwen2 of {r0['params']:,} parameters "
          f"(hidden {spec['hidden_size']}, {spec['num_layers']} layers, {spec['num_heads']} heads / {spec['num_kv_heads']} kv, "
          f"MLP {spec['intermediate_size']}, vocabulary {spec['vocab_size']:,}, untied output layer), one Hi-GRPO "
          f"optimizer step (HiGRPOTrainer.optimize, reference copy), step-2 sequences of {r0['seq_len']} tokens "
          f"({r0['scored']} scored), frozen: {'+'.join(r0['frozen']) or 'nothing'}; accumulation = micro-batches per "
          f"phase (an update runs 2 x that backwards)")
    print(f"{'ckpt':<5}{'mb':>3}{'acc':>4} {'grad sync':<14}{'predicted MB':>13}{'measured MB':>12}{'meas/pred':>10}  "
          f"peak phase (plan): its terms in MB")
    for r in rows:
        terms = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in r["terms"].items())
        print(f"{('on' if r['ckpt'] else 'off'):<5}{r['micro_batch']:>3}{r['accumulation']:>4} "
              f"{('every micro' if r['sync'] else 'last (old)'):<14}{r['predicted'] / 1e6:13.1f}{r['measured'] / 1e6:12.1f}"
              f"{r['measured'] / r['predicted']:10.2f}  {r['phase']}: {terms}")
    print("(measured: per rank, VmHWM after resetting it (/proc/self/clear_refs) minus VmRSS just before the step, "
          "the larger of the 2 ranks; glibc's mmap and trim thresholds fixed at 64 KiB so freed tensors leave the "
          "resident set; predicted: the plan's largest training phase minus what the baseline already holds "
          "(params, reference, AdamW states, last step's sharded gradients))")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="32-true", help="validation precision (CPU)")
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a tiny model, one configuration per setting (the suite's check)")
    ap.add_argument("--freeze-root", action="store_true", help="validation with embeddings and lm_head frozen (no "
                    "root-unit gradients: activations, log-probs and the gradient terms set the peak)")
    ap.add_argument("--overhead-gb", type=float, default=3.0)
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._measure:
        measure(json.loads(a._measure))
        return 0
    counts = count_model(build_meta_model(shapellm_omni_config()))
    print_plan(counts, a.overhead_gb)
    print_config_plan(counts, a.overhead_gb)
    if not a.no_validate:
        print_validation(validate(a.precision, smoke=a.smoke, freeze_root=a.freeze_root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
