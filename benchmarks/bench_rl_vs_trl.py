"""rewardkit's HiGRPOTrainer side by side with TRL's GRPOTrainer (prints figures, asserts nothing).

Both trainers train the same random-init tiny Llama policy (:func:`rewardkit.rl.policy.build_tiny_policy`,
fp32, on the CPU) on the same prompts with the same group size, learning rate, clip range (0.2 / 0.28),
KL weight (k3 against a frozen reference copy), token-level loss normalisation (TRL's ``loss_type="dapo"``),
one optimizer update per rollout (rewardkit ``mu=1``, TRL ``num_iterations=1``) and the same reward:
the completion's mesh-code tokens decoded by the voxel-block shape tokenizer into an occupancy grid and
a mesh, scored by rewardkit's builtin ``occupancy_iou`` against the prompt's demo shape. Each run is a
separate subprocess (so its RSS high-water mark is its own) with ``--threads`` torch threads.

Work per optimizer step is matched sequence for sequence. One rewardkit step samples ``P`` prompts x
``G`` two-step samples: step 1 (reasoning, then mesh codes) and step 2 (conditioned on step 1's plan), so
``2 P G`` sequences in 4 ``generate`` calls of ``P G`` rows (two phases per step) and ``2 P G`` sequences
trained on in micro-batches of ``P G``. TRL is given ``2 P`` prompts per step (step-1-style and
step-2-style prompts, so prompt lengths match) x ``G`` completions, generated ``P G`` at a time
(``steps_per_generation=1``, ``gradient_accumulation_steps=2``) and trained in micro-batches of ``P G``.
TRL's ``max_completion_length`` (= ``min_new_tokens``: every completion has exactly that length) is set
to the mean number of tokens rewardkit generated per sequence in its own run, measured first.

Figures (steps after ``--warmup`` only):

- generated tokens: tokens each ``generate`` call returned up to and including its stop token, counted
  the same way for both trainers (a wrapper around the Hugging Face model's ``generate``);
- s / generated token (generate): time inside ``generate`` / generated tokens;
- s / row-position (generate): the same over rows x new positions, counting the positions of rows that
  already stopped and are padded until the whole batch stops (what ``generate`` computes);
- s / generated token (step): wall time of whole optimizer steps (generation, decoding, rewards,
  reference and policy forwards, backward, AdamW) / generated tokens;
- s / optimizer step, and peak RSS (``ru_maxrss``) of each subprocess, also after setup.

Usage::

    python benchmarks/bench_rl_vs_trl.py [--threads 1] [--steps 4] [--warmup 1] [--hidden 192] [--layers 4]
        [--group-size 8] [--prompts-per-step 2] [--reasoning 16] [--resolution 8] [--json out.json]
    python benchmarks/bench_rl_vs_trl.py --tiny --steps 1 --warmup 0      # seconds: the smoke test's setting
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = ["a cube", "a ball", "a tall cylinder", "a cone", "a small table", "an arch"]
# step-2 prompts for TRL carry a plan of this text (repeated to the reasoning budget), like rewardkit's
PLAN_WORDS = "a single block centred in the grid with straight sides and a flat top".split()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class GenerateMeter:
    """Wraps a Hugging Face model's ``generate`` (an instance attribute, the model's code untouched):
    seconds inside it and generated tokens (each row up to and including its first stop token)."""

    def __init__(self, model: Any):
        import torch

        self.seconds = 0.0
        self.tokens = 0
        self.positions = 0  # rows x new positions: includes rows that stopped and are padded until all stop
        self.calls = 0
        inner = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            prompt_len = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds += time.perf_counter() - t
            stop = kwargs["generation_config"].eos_token_id
            stop = [stop] if isinstance(stop, int) else list(stop or [])
            new = out[:, prompt_len:]
            hit = torch.isin(new, torch.tensor(stop, device=new.device)) if stop else torch.zeros_like(new, dtype=torch.bool)
            first = torch.where(hit.any(1), hit.int().argmax(1) + 1, torch.full_like(hit[:, 0], new.shape[1], dtype=torch.long))
            self.tokens += int(first.sum())
            self.positions += new.numel()
            self.calls += 1
            return out

        model.generate = generate

    def snapshot(self) -> tuple[float, int, int]:
        return self.seconds, self.tokens, self.positions


def build_policy(path: Path, a: argparse.Namespace) -> dict[str, Any]:
    from rewardkit.rl.policy import build_tiny_policy
    from rewardkit.rl.tokenizers import create_tokenizer
    from rewardkit.rl.trainer import STEP1_TEMPLATE, STEP2_TEMPLATE

    tok = create_tokenizer({"type": "voxel_blocks", "resolution": a.resolution, "block": 2})
    words = [STEP1_TEMPLATE, STEP2_TEMPLATE, *PROMPTS, " ".join(PLAN_WORDS)]
    words = [w for t in words for w in t.replace("{prompt}", " ").replace("{plan}", " ").split()]
    build_tiny_policy(path, words, codebook_size=tok.codebook_size, tokens_per_object=tok.num_tokens, arch="llama",
                      hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads, max_positions=1024, seed=0)
    return {"tokens_per_object": tok.num_tokens, "codebook_size": tok.codebook_size}


def _summary(step_s: list[float], gen: list[tuple[float, int]], warmup: int, rss_setup: float) -> dict[str, Any]:
    """Figures of the steps after ``warmup``; ``gen`` holds (generate seconds, tokens, positions) after each
    step."""
    w = min(warmup, len(step_s) - 1)
    g0 = gen[w - 1] if w > 0 else (0.0, 0, 0)
    gen_s, toks, pos = (x - y for x, y in zip(gen[-1], g0))
    steps = step_s[w:]
    return {
        "steps_timed": len(steps), "generated_tokens": toks, "generated_tokens_per_step": toks / len(steps),
        "generated_positions": pos, "s_per_gen_token_generate": gen_s / max(1, toks),
        "s_per_position_generate": gen_s / max(1, pos), "s_per_gen_token_step": sum(steps) / max(1, toks),
        "s_per_step": sum(steps) / len(steps), "rss_setup_mb": rss_setup, "rss_peak_mb": _rss_mb(),
    }


# -- the two workers (each in its own subprocess) -----------------------------------------------------

def run_rewardkit(a: argparse.Namespace, policy_dir: Path, out: Path) -> dict[str, Any]:
    import torch

    from rewardkit.rl.policy import SamplingConfig
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    torch.set_num_threads(a.threads)
    iou = {"name": "iou", "builtin": "occupancy_iou"}
    cfg = HiGRPOConfig(
        policy_path=str(policy_dir), tokens_per_object=(a.resolution // 2) ** 3,
        shape_tokenizer={"type": "voxel_blocks", "resolution": a.resolution, "block": 2},
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_reasoning_tokens=a.reasoning),
        prompts=list(PROMPTS), rewards_global=[iou], rewards_local=[iou], group_size=a.group_size,
        prompts_per_step=a.prompts_per_step, mu=1, beta=0.01, eps_low=0.2, eps_high=0.28, lr=1e-5,
        micro_batch_size=a.group_size * a.prompts_per_step, dynamic_sampling=False, steps=a.steps, seed=0,
        output_dir=str(out), save_every=0, eval_group_size=0, render=False, accelerator="cpu", devices=1,
        precision="32-true", num_threads=a.threads, overlap_rewards=not a.no_overlap,
    )
    trainer = HiGRPOTrainer(cfg)
    meter = GenerateMeter(trainer.policy.model)
    rss_setup = _rss_mb()
    step_s, gen, seq_tokens = [], [], []
    for _ in range(a.steps):
        t = time.perf_counter()
        before = meter.tokens
        trainer.train_step()
        step_s.append(time.perf_counter() - t)
        gen.append(meter.snapshot())
        seq_tokens.append((meter.tokens - before) / (2 * a.group_size * a.prompts_per_step))
    res = _summary(step_s, gen, a.warmup, rss_setup)
    res["tokens_per_sequence"] = sum(seq_tokens) / len(seq_tokens)
    res["generate_calls"] = meter.calls
    return res


def run_trl(a: argparse.Namespace, policy_dir: Path, out: Path, completion_len: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewardkit.rl.policy import MeshPolicy
    from rewardkit.rl.rewards import occupancy_iou
    from rewardkit.rl.tokenizers import create_tokenizer
    from rewardkit.rl.tokenizers.base import fit_codes
    from rewardkit.rl.trainer import STEP1_TEMPLATE, STEP2_TEMPLATE

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
    shape_tok = create_tokenizer({"type": "voxel_blocks", "resolution": a.resolution, "block": 2})
    lut = MeshPolicy(model, tokenizer, shape_tok.num_tokens, shape_tok.codebook_size, use_chat_template=False).vocab.token_to_code().numpy()
    iou = occupancy_iou(a.resolution)

    def mesh_iou(prompts, completions, completion_ids, object, **_: Any) -> list[float]:  # `object`: the dataset column's name
        """The rewardkit reward on TRL's completion: its <meshN> tokens -> codes -> grid -> mesh -> IoU."""
        codes = []
        for ids in completion_ids:
            c = lut[np.asarray(ids, dtype=np.int64)] if len(ids) else np.empty(0, dtype=np.int64)
            codes.append(fit_codes(c[c >= 0].tolist(), shape_tok.num_tokens))
        meshes = [shape_tok.to_mesh(o) for o in shape_tok.decode(np.stack(codes))]
        return iou(meshes, list(object))

    plan = " ".join((PLAN_WORDS * (a.reasoning // len(PLAN_WORDS) + 1))[: a.reasoning])
    rows = [{"prompt": STEP1_TEMPLATE.format(prompt=p), "object": p} for p in PROMPTS]
    rows += [{"prompt": STEP2_TEMPLATE.format(prompt=p, plan=plan), "object": p} for p in PROMPTS]
    data = Dataset.from_list(rows)
    n = a.group_size * a.prompts_per_step
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=n, gradient_accumulation_steps=2, steps_per_generation=1,
        num_generations=a.group_size, max_completion_length=completion_len,
        generation_kwargs={"min_new_tokens": completion_len}, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.01, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group", num_iterations=1,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=a.steps, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0, log_completions=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=mesh_iou, args=args, train_dataset=data, processing_class=tokenizer)
    meter = GenerateMeter(trainer.model)
    rss_setup = _rss_mb()
    marks: list[float] = []
    gen: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            marks.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            marks.append(time.perf_counter())
            gen.append(meter.snapshot())

    trainer.add_callback(Clock())
    trainer.train()
    step_s = [b - a_ for a_, b in zip(marks, marks[1:])]
    res = _summary(step_s, gen, a.warmup, rss_setup)
    res["tokens_per_sequence"] = completion_len
    res["generate_calls"] = meter.calls
    return res


# -- driver -------------------------------------------------------------------------------------------

def _worker(kind: str, a: argparse.Namespace, policy_dir: Path, work: Path, completion_len: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--policy-dir", str(policy_dir), "--work", str(work),
           "--completion-len", str(completion_len)] + a.passthrough
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{kind} run failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"{kind} run printed no result:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _table(rk: dict[str, Any], trl: dict[str, Any]) -> str:
    def r(k: str) -> str:
        return f"{rk[k] / trl[k]:.2f}x" if trl[k] else "-"

    rows = [
        ("generated tokens / sequence", f"{rk['tokens_per_sequence']:.1f}", f"{trl['tokens_per_sequence']:.1f}", ""),
        ("generated tokens / step", f"{rk['generated_tokens_per_step']:.0f}", f"{trl['generated_tokens_per_step']:.0f}", ""),
        ("generate calls (all steps)", f"{rk['generate_calls']}", f"{trl['generate_calls']}", ""),
        ("ms / generated token (generate)", f"{rk['s_per_gen_token_generate'] * 1e3:.3f}", f"{trl['s_per_gen_token_generate'] * 1e3:.3f}", r("s_per_gen_token_generate")),
        ("ms / row-position (generate, padding incl.)", f"{rk['s_per_position_generate'] * 1e3:.3f}", f"{trl['s_per_position_generate'] * 1e3:.3f}", r("s_per_position_generate")),
        ("ms / generated token (whole step)", f"{rk['s_per_gen_token_step'] * 1e3:.3f}", f"{trl['s_per_gen_token_step'] * 1e3:.3f}", r("s_per_gen_token_step")),
        ("s / optimizer step", f"{rk['s_per_step']:.2f}", f"{trl['s_per_step']:.2f}", r("s_per_step")),
        ("RSS after setup (MB)", f"{rk['rss_setup_mb']:.0f}", f"{trl['rss_setup_mb']:.0f}", r("rss_setup_mb")),
        ("peak RSS (MB)", f"{rk['rss_peak_mb']:.0f}", f"{trl['rss_peak_mb']:.0f}", r("rss_peak_mb")),
    ]
    w = max(len(x[0]) for x in rows)
    out = [f"{'':<{w}}  {'rewardkit':>10}  {'TRL':>10}  {'rk / TRL':>8}"]
    out += [f"{name:<{w}}  {a_:>10}  {b:>10}  {c:>8}" for name, a_, b, c in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per trainer")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the figures")
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--reasoning", type=int, default=16, help="rewardkit max_reasoning_tokens per step")
    ap.add_argument("--resolution", type=int, default=8, help="voxel grid (tokens per object: (res/2)^3)")
    ap.add_argument("--no-overlap", action="store_true", help="rewardkit with overlap_rewards off")
    ap.add_argument("--tiny", action="store_true", help="tiny everything (smoke test): hidden 32, 1 layer, G 2")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", choices=["rewardkit", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--policy-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--completion-len", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.tiny:
        a.hidden, a.layers, a.heads, a.group_size, a.prompts_per_step, a.reasoning, a.resolution = 32, 1, 2, 2, 1, 4, 4
    if a.worker:
        fn = run_rewardkit if a.worker == "rewardkit" else run_trl
        kw = {"completion_len": a.completion_len} if a.worker == "trl" else {}
        res = fn(a, a.policy_dir, a.work / a.worker, **kw)
        print("RESULT " + json.dumps(res), flush=True)
        return
    a.passthrough = [x for k in ("threads", "steps", "warmup", "hidden", "layers", "heads", "group_size",
                                 "prompts_per_step", "reasoning", "resolution")
                     for x in (f"--{k.replace('_', '-')}", str(getattr(a, k)))] + (["--no-overlap"] if a.no_overlap else [])
    work = Path(tempfile.mkdtemp(prefix="rk-bench-trl-"))
    info = build_policy(work / "policy", a)
    import trl

    print(f"# tiny llama policy: hidden {a.hidden}, {a.layers} layers, vocab with {info['codebook_size']} mesh codes; "
          f"G={a.group_size}, {a.prompts_per_step} prompts/step, {info['tokens_per_object']} mesh tokens/object, "
          f"reasoning <= {a.reasoning}; {a.steps} steps ({a.warmup} warm-up not timed); {a.threads} thread(s); "
          f"TRL {trl.__version__}")
    rk = _worker("rewardkit", a, work / "policy", work)
    completion_len = max(1, round(rk["tokens_per_sequence"]))
    tr = _worker("trl", a, work / "policy", work, completion_len)
    print(_table(rk, tr))
    if a.json:
        a.json.write_text(json.dumps({"rewardkit": rk, "trl": tr, "args": {k: v for k, v in vars(a).items()
                                                                           if k not in ("passthrough", "json")}},
                                     indent=2, default=str))


if __name__ == "__main__":
    main()
