"""The CPU demo's supervised warm start: a random-init tiny causal LM learns to write the procedural
demo shapes' plans, details and (jittered) mesh tokens before RL. Not part of a real run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rewardkit.rl.config import HiGRPOConfig
from rewardkit.rl.policy import MeshPolicy, SamplingConfig, build_tiny_policy
from rewardkit.rl.sequences import PHASE_MESH, PHASE_TEXT, RolloutBatch, StepRollout
from rewardkit.demo.shapes import demo_shape, jitter
from rewardkit.rl.tokenizers import ShapeTokenizer

__all__ = ["warm_start"]

log = logging.getLogger("rewardkit.rl.trainer")


def warm_start(final: Path, cfg: HiGRPOConfig, prompts: Sequence[str], shape_tokenizer: ShapeTokenizer,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """Build + train the tiny policy in ``<final>.tmp`` and rename it when done, so an interrupted
    warm start never leaves a half-trained model where the next run would pick it up."""
    import shutil

    ws = cfg.warm_start
    path = final.with_name(final.name + ".tmp")
    shutil.rmtree(path, ignore_errors=True)
    shapes = [demo_shape(s) for s in ws.shapes]
    words: list[str] = []
    for text in [cfg.step1_template, cfg.step2_template, *prompts] + [t for s in shapes for t in (s.prompt, s.plan, s.detail)]:
        words += text.replace("{prompt}", " ").replace("{plan}", " ").split()
    tok3d = shape_tokenizer
    build_tiny_policy(
        path, words, codebook_size=tok3d.codebook_size, tokens_per_object=tok3d.num_tokens, arch=ws.arch,
        hidden_size=ws.hidden_size, num_layers=ws.num_layers, num_heads=ws.num_heads, seed=ws.seed,
    )
    policy = MeshPolicy.from_pretrained(path, use_chat_template=cfg.use_chat_template)
    model = policy.model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=ws.lr)
    rng = np.random.default_rng(ws.seed)
    torch.manual_seed(ws.seed)
    enc = lambda t: list(policy.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    ctx1 = {s.name: policy.encode_context(cfg.step1_template.format(prompt=s.prompt)) for s in shapes}
    ctx2 = {s.name: policy.encode_context(cfg.step2_template.format(prompt=s.prompt, plan=s.plan)) for s in shapes}
    base = {s.name: s.occupancy(tok3d.resolution) for s in shapes}
    losses = []
    t0 = time.time()
    for it in range(ws.steps):
        batch = []
        for _ in range(ws.batch_size):
            s = shapes[int(rng.integers(len(shapes)))]
            step2 = bool(rng.integers(2))
            codes = tok3d.encode(jitter(base[s.name], rng, ws.max_shift, ws.p_dilate))
            text = enc(s.detail if step2 else s.plan)
            mesh = policy.mesh_sequence(codes)
            batch.append(StepRollout(
                context_ids=ctx2[s.name] if step2 else ctx1[s.name], completion_ids=text + mesh,
                phases=[PHASE_TEXT] * (len(text) + 1) + [PHASE_MESH] * (len(mesh) - 1),
                reasoning_text="", codes=codes, num_codes_emitted=len(codes),
            ))
        b = RolloutBatch.collate(batch, policy.vocab.pad_id).to(device)
        lp = policy.logprobs(model, b, SamplingConfig(temperature=1.0, constrain_logprobs=cfg.sampling.constrain_logprobs))
        loss = -(lp * b.mask).sum() / b.mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (it + 1) % 50 == 0:
            log.info("warm start %d/%d: nll/token %.3f", it + 1, ws.steps, np.mean(losses[-50:]))
    policy.save_pretrained(path, model=model)
    metrics = {"steps": ws.steps, "nll_first": losses[0], "nll_last": float(np.mean(losses[-10:])), "seconds": time.time() - t0}
    (path / "warm_start.json").write_text(json.dumps(metrics, indent=2))
    if final.exists():
        shutil.rmtree(final)
    path.rename(final)
    return metrics

