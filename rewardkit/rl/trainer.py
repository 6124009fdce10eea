"""HiGRPOConfig + HiGRPOTrainer: two-step (global -> local) GRPO for autoregressive text-to-3D policies.

One training step:

1. sample ``prompts_per_step`` prompts; for each, G step-1 rollouts (semantic plan + coarse mesh
   tokens) and, conditioned on each plan, G step-2 rollouts (visual detail + refined mesh tokens);
2. decode both meshes, score step 1 with the R_high terms and step 2 with the R_low terms;
3. dynamic sampling: drop groups whose rewards have zero variance in both steps, sample new prompts
   until the batch is full (at most ``max_sampling_rounds`` rounds);
4. advantages A1 from R~_high = R_high + lambda R_low and A2 from R_low, group-normalized;
5. ``mu`` optimizer updates of L1 + L2 (token-level clipped surrogate with k3 KL to the frozen start).

Devices and parallelism come from Lightning Fabric (``accelerator``, ``devices``, ``strategy``,
``precision``, ``num_nodes``): each device rolls out its own prompt groups, the token normalizer is
summed over devices, and DDP averages gradients, so the loss is the global token-level mean.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch

from rewardkit import config as _config
from rewardkit.rl.hi_grpo import clipped_token_loss, combine_step_rewards, group_advantages, group_has_signal
from rewardkit.rl.policy import (
    PHASE_MESH,
    PHASE_TEXT,
    MeshPolicy,
    RolloutBatch,
    SamplingConfig,
    StepRollout,
    build_tiny_policy,
)
from rewardkit.rl.rewards import StepReward, build_step_reward, group_stats
from rewardkit.rl.shapes import DEMO_SHAPES, demo_shape, jitter
from rewardkit.rl.tokenizers import ShapeTokenizer, create_tokenizer

__all__ = ["HiGRPOConfig", "WarmStartConfig", "HiGRPOTrainer", "load_config"]

log = logging.getLogger(__name__)

STEP1_TEMPLATE = (
    "Produce a concise high-level semantic plan for the 3D object: {prompt} . Focus on global shape primitives ."
)
STEP2_TEMPLATE = (
    "Given the text prompt and a high-level plan , write only a detailed visual description . "
    "Prompt: {prompt} . Plan: {plan} . Expand parts into precise geometric details ."
)


@dataclass
class WarmStartConfig:
    """Supervised warm start of a tiny random-init causal LM on the procedural demo shapes.

    Used when ``enabled`` and ``HiGRPOConfig.policy_path`` holds no model yet: a tiny model is
    written there, then trained to write each shape's plan/detail text and (jittered) mesh tokens.
    """

    enabled: bool = False
    arch: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    shapes: list[str] = field(default_factory=lambda: list(DEMO_SHAPES))
    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-3
    max_shift: int = 1  # jitter of the supervised shapes, so the start policy is valid but imperfect
    p_dilate: float = 0.0
    seed: int = 0


@dataclass
class HiGRPOConfig:
    """Every setting of a Hi-GRPO run (policy, prompts, reward terms, GRPO hyper-parameters, engine).
    Build it with :meth:`from_dict` or :func:`load_config` (strict, typed: :mod:`rewardkit.config`)."""

    # -- policy ----------------------------------------------------------------------------------
    policy_path: str = ""  # local Hugging Face checkpoint directory; "{output_dir}" is substituted
    tokens_per_object: int = 1024  # ShapeLLM-Omni: 1024
    codebook_size: int | None = None  # None: every <meshN> token in the vocabulary
    shape_tokenizer: dict[str, Any] = field(default_factory=lambda: {"type": "voxel_blocks", "resolution": 8, "block": 2})
    dtype: str | None = None
    use_chat_template: bool | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # -- prompts ---------------------------------------------------------------------------------
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None  # one prompt per line, or a JSON list
    step1_template: str = STEP1_TEMPLATE
    step2_template: str = STEP2_TEMPLATE
    # -- rewards ---------------------------------------------------------------------------------
    rewards_high: list[dict[str, Any]] = field(default_factory=list)  # step-1 (global) terms
    rewards_low: list[dict[str, Any]] = field(default_factory=list)  # step-2 (local) terms
    reward_on_error: Literal["raise", "mark"] = "raise"
    # -- Hi-GRPO (paper values as defaults) ------------------------------------------------------
    group_size: int = 8
    prompts_per_step: int = 2  # groups per device per optimizer step
    lam: float = 1.0
    beta: float = 0.01
    eps_low: float = 0.2
    eps_high: float = 0.28
    adv_eps: float = 1e-4
    mu: int = 1
    dynamic_sampling: bool = True
    max_sampling_rounds: int = 4
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    micro_batch_size: int = 16  # sequences per forward/backward
    # -- run -------------------------------------------------------------------------------------
    steps: int = 1200
    seed: int = 0
    output_dir: str = "out/rl"
    save_every: int = 100
    keep_checkpoints: int = 2
    eval_group_size: int = 4  # samples per prompt in the before/after evaluation (0: skip it)
    eval_prompts: list[str] = field(default_factory=list)  # default: the first 6 training prompts
    render: bool = True
    render_size: int = 160
    # -- engine (Lightning Fabric) ---------------------------------------------------------------
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"  # Lightning's names (gpu = cuda)
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = 1
    num_threads: int | None = None  # torch CPU threads; 1 is fastest for tiny models on a busy machine
    # -- warm start ------------------------------------------------------------------------------
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HiGRPOConfig":
        """A HiGRPOConfig from plain data, strictly typed, nested sections included
        (:func:`rewardkit.config.from_dict`)."""
        return _config.from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve_prompts(self) -> list[str]:
        prompts = list(self.prompts)
        if self.prompts_file:
            try:
                text = Path(self.prompts_file).read_text()
                prompts += json.loads(text) if self.prompts_file.endswith(".json") else [l.strip() for l in text.splitlines() if l.strip()]
            except (OSError, ValueError) as exc:
                raise _config.ConfigError(f"prompts_file {self.prompts_file}: {getattr(exc, 'strerror', None) or exc}") from exc
        if not prompts:
            raise _config.ConfigError("no training prompts: set prompts or prompts_file")
        return prompts


def load_config(path: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None) -> HiGRPOConfig:
    """A config from YAML/JSON. A top-level ``rl:`` section is used if present (params.yaml style);
    relative paths (``policy_path``, ``output_dir``, ``prompts_file``) stay relative to the CWD.
    ``overrides``: ``key.sub=value`` strings (values parsed as YAML) or a mapping of (dotted) keys to
    values. Errors are one-line :class:`rewardkit.config.ConfigError` s."""
    data = _config.load_file(path)
    if "rl" in data and isinstance(data["rl"], Mapping):
        data = data["rl"]
    data = dict(data)
    _config.apply_overrides(data, overrides or {}, HiGRPOConfig)
    return HiGRPOConfig.from_dict(data)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _step_seed(seed: int, step: int, rank: int, extra: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, rank, extra]).generate_state(1)[0])


@dataclass
class _Group:
    prompt: str
    step1: list[StepRollout]
    step2: list[StepRollout]
    meshes1: list[Any]
    meshes2: list[Any]
    r_high: np.ndarray
    r_low: np.ndarray
    terms_high: dict[str, np.ndarray]
    terms_low: dict[str, np.ndarray]  # raw term values; NaN where the term failed for that sample


class HiGRPOTrainer:
    """Hi-GRPO for a :class:`MeshPolicy`. Rewards default to the config's terms; pass ``reward_high``/
    ``reward_low`` (:class:`StepReward`) to use Python callables directly."""

    def __init__(
        self,
        config: HiGRPOConfig,
        reward_high: StepReward | None = None,
        reward_low: StepReward | None = None,
        shape_tokenizer: ShapeTokenizer | None = None,
        fabric: Any = None,
    ):
        from lightning.fabric import Fabric

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        config.policy_path = config.policy_path.replace("{output_dir}", config.output_dir)
        self.cfg = config
        self.out = Path(config.output_dir)
        self.fabric = fabric or Fabric(
            accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
            precision=config.precision, num_nodes=config.num_nodes,
        )
        if fabric is None:
            self.fabric.launch()
        self.shape_tokenizer = shape_tokenizer or create_tokenizer(config.shape_tokenizer)
        res = self.shape_tokenizer.resolution
        try:
            self.reward_high = reward_high or build_step_reward(config.rewards_high, config.reward_on_error, {"resolution": res})
        except ValueError as exc:  # a bad term in the config: a one-line ConfigError naming the section
            raise _config.ConfigError(f"rewards_high: {exc}") from exc
        try:
            self.reward_low = reward_low or build_step_reward(config.rewards_low, config.reward_on_error, {"resolution": res})
        except ValueError as exc:
            raise _config.ConfigError(f"rewards_low: {exc}") from exc
        self.prompts = config.resolve_prompts()
        self.step = 0
        self.records: list[dict[str, Any]] = []
        self._setup_policy()

    # -- setup -----------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    def _setup_policy(self) -> None:
        cfg = self.cfg
        path = Path(cfg.policy_path)
        if not cfg.policy_path:
            raise ValueError("policy_path is required (a local Hugging Face checkpoint directory)")
        if not (path / "config.json").exists():
            if not cfg.warm_start.enabled:
                raise FileNotFoundError(f"{path} holds no Hugging Face model (config.json) and warm_start is off")
            if self.is_main:
                self._warm_start(path)
            self.fabric.barrier()
        self.policy = MeshPolicy.from_pretrained(
            path, tokens_per_object=cfg.tokens_per_object, codebook_size=cfg.codebook_size, dtype=cfg.dtype,
            use_chat_template=cfg.use_chat_template,
        )
        if self.policy.tokens_per_object != self.shape_tokenizer.num_tokens:
            raise ValueError(
                f"the policy emits {self.policy.tokens_per_object} mesh tokens per object but the shape tokenizer "
                f"takes {self.shape_tokenizer.num_tokens}"
            )
        if self.policy.vocab.codebook_size < self.shape_tokenizer.codebook_size:
            raise ValueError("the policy vocabulary has fewer <meshN> tokens than the shape tokenizer's codebook")
        model = self.policy.model
        self.ref_model = None
        if cfg.beta != 0.0:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(self.fabric.device)
        model.eval()  # dropout off: the ratio must compare the same function (see docs/hi-grpo.md)
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.adam_betas,
            weight_decay=cfg.weight_decay,
        )
        self.model, self.optimizer = self.fabric.setup(model, opt)

    # -- warm start ------------------------------------------------------------------------------
    def _warm_start(self, final: Path) -> dict[str, Any]:
        """Build + train the tiny policy in ``<final>.tmp`` and rename it when done, so an interrupted
        warm start never leaves a half-trained model where the next run would pick it up."""
        import shutil

        ws, cfg = self.cfg.warm_start, self.cfg
        path = final.with_name(final.name + ".tmp")
        shutil.rmtree(path, ignore_errors=True)
        shapes = [demo_shape(s) for s in ws.shapes]
        words: list[str] = []
        for text in [cfg.step1_template, cfg.step2_template, *self.prompts] + [t for s in shapes for t in (s.prompt, s.plan, s.detail)]:
            words += text.replace("{prompt}", " ").replace("{plan}", " ").split()
        tok3d = self.shape_tokenizer
        build_tiny_policy(
            path, words, codebook_size=tok3d.codebook_size, tokens_per_object=tok3d.num_tokens, arch=ws.arch,
            hidden_size=ws.hidden_size, num_layers=ws.num_layers, num_heads=ws.num_heads, seed=ws.seed,
        )
        policy = MeshPolicy.from_pretrained(path, use_chat_template=cfg.use_chat_template)
        model = policy.model.to(self.fabric.device).train()
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
            b = RolloutBatch.collate(batch, policy.vocab.pad_id).to(self.fabric.device)
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

    # -- rollouts --------------------------------------------------------------------------------
    def _decode(self, steps: Sequence[StepRollout]) -> list[Any]:
        occ = self.shape_tokenizer.decode(np.stack([s.codes for s in steps]))
        return [self.shape_tokenizer.to_mesh(o) for o in occ]

    def rollout(self, prompts: Sequence[str], group_size: int, seed: int) -> list[_Group]:
        """G two-step samples for each prompt, decoded and scored."""
        cfg, G = self.cfg, group_size
        model = self.model
        flat = [p for p in prompts for _ in range(G)]
        s1 = self.policy.rollout_step(model, [cfg.step1_template.format(prompt=p) for p in flat], cfg.sampling, seed)
        ctx2 = [cfg.step2_template.format(prompt=p, plan=s.reasoning_text) for p, s in zip(flat, s1)]
        s2 = self.policy.rollout_step(model, ctx2, cfg.sampling, seed + 7)
        m1, m2 = self._decode(s1), self._decode(s2)
        rh, rl = self.reward_high(m1, flat), self.reward_low(m2, flat)
        groups = []
        for g, p in enumerate(prompts):
            sl = slice(g * G, (g + 1) * G)
            groups.append(_Group(
                p, s1[sl], s2[sl], m1[sl], m2[sl], rh.total[sl], rl.total[sl],
                {k: v[sl] for k, v in rh.terms.items()}, {k: v[sl] for k, v in rl.terms.items()},
            ))
        return groups

    def _signal(self, g: _Group) -> bool:
        G = self.cfg.group_size
        rt = combine_step_rewards(torch.from_numpy(g.r_high), torch.from_numpy(g.r_low), self.cfg.lam)
        return bool(group_has_signal(rt, G)[0] or group_has_signal(torch.from_numpy(g.r_low), G)[0])

    def collect(self, step: int) -> tuple[list[_Group], dict[str, Any]]:
        """Rollouts for one optimizer step, with dynamic sampling (drop zero-variance groups, refill)."""
        cfg = self.cfg
        kept: list[_Group] = []
        sampled: list[_Group] = []
        rounds = 0
        rng = np.random.default_rng(_step_seed(cfg.seed, step, self.fabric.global_rank, 1))
        while len(kept) < cfg.prompts_per_step and rounds < max(1, cfg.max_sampling_rounds):
            need = cfg.prompts_per_step - len(kept)
            n = min(need, len(self.prompts))
            prompts = [self.prompts[i] for i in rng.choice(len(self.prompts), size=n, replace=False)]
            groups = self.rollout(prompts, cfg.group_size, _step_seed(cfg.seed, step, self.fabric.global_rank, 100 + rounds))
            sampled += groups
            kept += [g for g in groups if (self._signal(g) or not cfg.dynamic_sampling)]
            rounds += 1
            if not cfg.dynamic_sampling:
                break
        stats = {"groups_sampled": len(sampled), "groups_kept": len(kept), "groups_dropped": len(sampled) - len(kept), "sampling_rounds": rounds}
        return kept[: cfg.prompts_per_step], {"sampled": sampled, **stats}

    # -- optimization ----------------------------------------------------------------------------
    def _advantages(self, groups: Sequence[_Group]) -> tuple[torch.Tensor, torch.Tensor]:
        G = self.cfg.group_size
        rh = torch.from_numpy(np.concatenate([g.r_high for g in groups]))
        rl = torch.from_numpy(np.concatenate([g.r_low for g in groups]))
        a1 = group_advantages(combine_step_rewards(rh, rl, self.cfg.lam), G, self.cfg.adv_eps)
        a2 = group_advantages(rl, G, self.cfg.adv_eps)
        # samples whose reward failed (NaN) train on nothing in that step
        valid1 = torch.isfinite(combine_step_rewards(rh, rl, self.cfg.lam)).float()
        valid2 = torch.isfinite(rl).float()
        return torch.stack([a1.float(), a2.float()]), torch.stack([valid1, valid2])

    def _ref_logprobs(self, batches: list[RolloutBatch]) -> list[torch.Tensor | None]:
        if self.ref_model is None:
            return [None] * len(batches)
        with torch.no_grad(), self.fabric.autocast():
            return [self.policy.logprobs(self.ref_model, b, self.cfg.sampling) for b in batches]

    def optimize(self, groups: Sequence[_Group]) -> dict[str, float]:
        cfg, fabric = self.cfg, self.fabric
        adv, valid = self._advantages(groups)
        mb = max(1, cfg.micro_batch_size)
        step_data = []
        for k in range(2):
            seqs = [s for g in groups for s in (g.step1 if k == 0 else g.step2)]
            batches, advs = [], []
            for i in range(0, len(seqs), mb):
                b = RolloutBatch.collate(seqs[i : i + mb], self.policy.vocab.pad_id)
                b.mask = b.mask * valid[k, i : i + mb, None]
                batches.append(b.to(fabric.device))
                advs.append(adv[k, i : i + mb].to(fabric.device))
            n_tok = torch.tensor(float(sum(b.mask.sum() for b in batches)), device=fabric.device)
            n_tok = fabric.all_reduce(n_tok, reduce_op="sum") if fabric.world_size > 1 else n_tok
            step_data.append((batches, advs, self._ref_logprobs(batches), n_tok))
        old: dict[tuple[int, int], torch.Tensor] = {}
        metrics: dict[str, list[float]] = {}
        micro = [(k, j) for k, (batches, *_rest) in enumerate(step_data) for j in range(len(batches))]
        for epoch in range(max(1, cfg.mu)):
            self.optimizer.zero_grad(set_to_none=True)
            for idx, (k, j) in enumerate(micro):
                batches, advs, refs, n_tok = step_data[k]
                b, a, ref = batches[j], advs[j], refs[j]
                # one gradient all-reduce per update on every device, however many micro-batches each has
                with fabric.no_backward_sync(self.model, enabled=idx < len(micro) - 1):
                    lp = self.policy.logprobs(self.model, b, cfg.sampling)
                    out = clipped_token_loss(
                        lp, old.get((k, j)), ref, a, b.mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                        beta=cfg.beta, num_tokens=n_tok,
                    )
                    fabric.backward(out.loss * fabric.world_size)
                if epoch == 0 and cfg.mu > 1:
                    old[(k, j)] = lp.detach()
                w = float(out.num_tokens)
                for name in ("kl", "clip_low_frac", "clip_high_frac", "ratio_mean"):
                    metrics.setdefault(f"step{k + 1}/{name}", []).append((float(getattr(out, name)) * w, w))
                metrics.setdefault(f"step{k + 1}/loss", []).append((float(out.loss.detach()), 1.0))
            grad_norm = fabric.clip_gradients(self.model, self.optimizer, max_norm=cfg.max_grad_norm) if cfg.max_grad_norm else None
            self.optimizer.step()
            if grad_norm is not None:
                metrics.setdefault("grad_norm", []).append((float(grad_norm), 1.0))
        result = {}
        for name, vals in metrics.items():
            if name.endswith("/loss"):  # summed over micro-batches, averaged over the mu epochs
                result[name] = sum(v for v, _ in vals) / max(1, cfg.mu)
            else:
                tot = sum(w for _, w in vals)
                result[name] = sum(v for v, _ in vals) / tot if tot else 0.0
        result["loss"] = result.get("step1/loss", 0.0) + result.get("step2/loss", 0.0)
        result["tokens/step1"] = float(step_data[0][3])
        result["tokens/step2"] = float(step_data[1][3])
        return result

    # -- metrics ---------------------------------------------------------------------------------
    def _reward_metrics(self, groups: Sequence[_Group]) -> dict[str, float]:
        G = len(groups[0].r_high) if groups else self.cfg.group_size
        out: dict[str, float] = {}
        if not groups:
            return out
        rh = np.concatenate([g.r_high for g in groups])
        rl = np.concatenate([g.r_low for g in groups])
        for name, v in (("r_high", rh), ("r_low", rl), ("r_high_tilde", rh + self.cfg.lam * rl)):
            out[name], out[f"{name}_group_std"] = group_stats(v, G)
        for step, attr in (("high", "terms_high"), ("low", "terms_low")):
            for term in getattr(groups[0], attr):
                v = np.concatenate([getattr(g, attr)[term] for g in groups])
                out[f"{step}/{term}"], out[f"{step}/{term}_group_std"] = group_stats(v, G)
                if np.isnan(v).any():
                    out[f"failed/{step}/{term}"] = float(np.isnan(v).sum())
        out["reasoning_tokens/step1"] = float(np.mean([sum(1 for p in s.phases if p == PHASE_TEXT) for g in groups for s in g.step1]))
        out["reasoning_tokens/step2"] = float(np.mean([sum(1 for p in s.phases if p == PHASE_TEXT) for g in groups for s in g.step2]))
        out["empty_meshes"] = float(sum(m is None for g in groups for m in g.meshes1 + g.meshes2))
        return out

    def _gather_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average each metric over the devices that have it (key sets can differ, e.g. failures)."""
        if self.fabric.world_size == 1:
            return metrics
        import torch.distributed as dist

        gathered: list[dict[str, float] | None] = [None] * self.fabric.world_size
        dist.all_gather_object(gathered, metrics)
        keys = sorted({k for g in gathered for k in g})
        return {k: float(np.mean([g[k] for g in gathered if k in g])) for k in keys}

    # -- one step / the loop ---------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.time()
        _seed_everything(_step_seed(cfg.seed, self.step, self.fabric.global_rank))
        groups, info = self.collect(self.step)
        metrics: dict[str, float] = {k: float(v) for k, v in info.items() if k != "sampled"}
        metrics |= self._reward_metrics(info["sampled"])  # what the policy produced this step
        t1 = time.time()
        n_groups = len(groups)
        if self.fabric.world_size > 1:  # all devices update together or not at all (DDP collectives)
            import torch.distributed as dist

            t = torch.tensor(n_groups, device=self.fabric.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            n_groups = int(t)
        if n_groups:
            metrics |= self.optimize(groups)
        else:
            metrics["skipped_update"] = 1.0
        metrics["seconds/rollout"] = t1 - t0
        metrics["seconds/update"] = time.time() - t1
        metrics = self._gather_mean(metrics)
        self.step += 1
        metrics = {"step": self.step, **metrics}
        self.records.append(metrics)
        if self.is_main:
            self._write_logs()
        return metrics

    def train(self, steps: int | None = None, resume: bool = False) -> dict[str, Any]:
        """Run to ``steps`` (default ``config.steps``) optimizer steps; writes logs, plot, checkpoints,
        before/after samples and ``metrics.json`` under ``output_dir``."""
        cfg = self.cfg
        total = cfg.steps if steps is None else steps
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
        if resume:
            self.load_checkpoint()
        elif self.step == 0 and self.is_main:  # a fresh run: no logs or samples of an earlier one
            import shutil

            for name in ("metrics.jsonl", "metrics.csv", "metrics.json", "reward_curve.png"):
                (self.out / name).unlink(missing_ok=True)
            for name in ("samples_before", "samples_after", "checkpoints"):
                shutil.rmtree(self.out / name, ignore_errors=True)
        summary: dict[str, Any] = {}
        before_path = self.out / "samples_before" / "samples.json"
        if cfg.eval_group_size > 0 and not before_path.exists():
            summary["eval_before"] = self.evaluate("samples_before")
        elif before_path.exists():
            summary["eval_before"] = json.loads(before_path.read_text())["metrics"]
        while self.step < total:
            m = self.train_step()
            if self.is_main:
                log.info("step %d  R_high %.4f  R_low %.4f  loss %.4f", m["step"], m.get("r_high", math.nan),
                         m.get("r_low", math.nan), m.get("loss", math.nan))
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save_checkpoint()
        if not cfg.save_every or self.step % cfg.save_every:
            self.save_checkpoint()
        if cfg.eval_group_size > 0:
            summary["eval_after"] = self.evaluate("samples_after")
        if self.is_main:
            self.policy.save_pretrained(self.out / "policy", model=self._unwrapped())
            summary |= self._summary()
            (self.out / "metrics.json").write_text(json.dumps(summary, indent=2))
            self._plot()
        return summary

    # -- evaluation and renders ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, name: str) -> dict[str, float]:
        """Fixed-seed samples of the eval prompts: mean rewards, plus renders and a JSON of samples."""
        cfg = self.cfg
        prompts = cfg.eval_prompts or self.prompts[:6]
        groups = self.rollout(prompts, cfg.eval_group_size, _step_seed(cfg.seed, 10**6, self.fabric.global_rank))
        metrics = self._reward_metrics(groups)
        metrics = self._gather_mean(metrics)
        if self.is_main:
            d = self.out / name
            d.mkdir(parents=True, exist_ok=True)
            rows = []
            for gi, g in enumerate(groups):
                for k in range(2):
                    m = (g.meshes1 if k == 0 else g.meshes2)[0]
                    if m is not None:
                        m.export(d / f"{gi:02d}_step{k + 1}.ply")
                rows.append({
                    "prompt": g.prompt, "plan": g.step1[0].reasoning_text, "detail": g.step2[0].reasoning_text,
                    "r_high": float(g.r_high[0]), "r_low": float(g.r_low[0]),
                })
            (d / "samples.json").write_text(json.dumps({"metrics": metrics, "samples": rows}, indent=2))
            if cfg.render:
                self._render(groups, d / "renders.png")
        return metrics

    @staticmethod
    def _with_grid_frame(mesh: Any) -> Any:
        """The mesh plus thin edges of the [-0.5, 0.5]^3 grid box, so renders (which fit each mesh to the
        view) still show where in the grid the shape sits and how big it is."""
        import trimesh

        t, edges = 0.012, []
        for axis in range(3):
            for a in (-0.5, 0.5):
                for b in (-0.5, 0.5):
                    extents = [t, t, t]
                    extents[axis] = 1.0 + t
                    centre = [a, b]
                    centre.insert(axis, 0.0)
                    edges.append(trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(centre)))
        parts = edges + ([mesh] if mesh is not None else [])
        return trimesh.util.concatenate(parts)

    def _render(self, groups: Sequence[_Group], path: Path) -> None:
        """One row per prompt: step-1 and step-2 meshes of its first sample, 3 views each, in the grid box."""
        from PIL import ImageDraw

        try:
            from rewardkit.render import Renderer, get_protocol, make_grid

            protocol = get_protocol("0:25,120:25,240:25", size=self.cfg.render_size)
            tiles = []
            with Renderer(size=self.cfg.render_size) as r:
                for g in groups:
                    for m in (g.meshes1[0], g.meshes2[0]):
                        tiles += list(r.render(self._with_grid_frame(m), protocol, modes=("geometry",))["geometry"])
            grid = make_grid(tiles, cols=6)
        except Exception as exc:  # noqa: BLE001 - renders are a report artifact; the run goes on
            log.warning("rendering samples failed (%s); writing a voxel plot instead", exc)
            grid = self._voxel_plot(groups)
        draw = ImageDraw.Draw(grid)
        h = grid.size[1] / max(1, len(groups))
        for i, g in enumerate(groups):
            draw.text((4, i * h + 2), f"{g.prompt}  R_high={g.r_high[0]:.2f}  R_low={g.r_low[0]:.2f}", fill=(200, 0, 0))
        grid.save(path)

    def _voxel_plot(self, groups: Sequence[_Group]) -> "Image.Image":
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from PIL import Image

        fig = plt.figure(figsize=(4, 2 * len(groups)))
        for i, g in enumerate(groups):
            for k, m in enumerate((g.meshes1[0], g.meshes2[0])):
                ax = fig.add_subplot(len(groups), 2, 2 * i + k + 1, projection="3d")
                if m is not None:
                    ax.voxels(np.asarray(m.metadata["occupancy"]).transpose(0, 2, 1))
                ax.set_axis_off()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    # -- logs, plot, summary ---------------------------------------------------------------------
    def _write_logs(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(self.records[-1]) + "\n")
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.records)

    def _summary(self) -> dict[str, Any]:
        recs = [r for r in self.records if "r_high" in r]
        if not recs:
            return {}
        k = max(1, min(5, len(recs) // 4))
        first = {n: float(np.mean([r[n] for r in recs[:k]])) for n in ("r_high", "r_low")}
        last = {n: float(np.mean([r[n] for r in recs[-k:]])) for n in ("r_high", "r_low")}
        return {
            "steps": self.step,
            "window": k,
            "r_high_first": first["r_high"], "r_high_last": last["r_high"],
            "r_low_first": first["r_low"], "r_low_last": last["r_low"],
            "r_high_rose": last["r_high"] > first["r_high"], "r_low_rose": last["r_low"] > first["r_low"],
        }

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recs = [r for r in self.records if "r_high" in r]
        if not recs:
            return
        steps = [r["step"] for r in recs]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for ax, name, title in ((axes[0], "r_high", "R_high (step 1, global)"), (axes[1], "r_low", "R_low (step 2, local)")):
            y = np.array([r[name] for r in recs])
            s = np.array([r.get(f"{name}_group_std", 0.0) for r in recs])
            ax.plot(steps, y, label="batch mean")
            ax.fill_between(steps, y - s, y + s, alpha=0.2, label="± within-group std")
            if len(y) >= 5:
                kern = np.ones(5) / 5
                ax.plot(steps[2:-2], np.convolve(y, kern, mode="valid"), label="5-step mean")
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.out / "reward_curve.png", dpi=100)
        plt.close(fig)

    # -- checkpoints -----------------------------------------------------------------------------
    def _unwrapped(self) -> torch.nn.Module:
        m = self.model
        return getattr(m, "module", m)

    def save_checkpoint(self) -> Path | None:
        """``output_dir/checkpoints/step-N/``: ``policy/`` (safetensors) + ``trainer_state.pt``
        (optimizer state, step; tensors only, loadable with ``weights_only=True``)."""
        d = self.out / "checkpoints" / f"step-{self.step:06d}"
        if self.is_main:
            self.policy.save_pretrained(d / "policy", model=self._unwrapped())
            torch.save({"step": self.step, "optimizer": self.optimizer.state_dict()}, d / "trainer_state.pt")
            (self.out / "checkpoints" / "latest").write_text(d.name)
            old = sorted(p for p in (self.out / "checkpoints").glob("step-*") if p != d)
            import shutil

            for p in old[: max(0, len(old) - max(0, self.cfg.keep_checkpoints - 1))]:
                shutil.rmtree(p, ignore_errors=True)
        self.fabric.barrier()
        return d

    def load_checkpoint(self, path: str | Path | None = None) -> int:
        """Restore policy weights, optimizer state, step and logs from ``path`` (default: latest)."""
        if path is None:
            latest = self.out / "checkpoints" / "latest"
            if not latest.exists():
                log.info("no checkpoint under %s; starting fresh", self.out)
                return 0
            path = self.out / "checkpoints" / latest.read_text().strip()
        path = Path(path)
        model = self._unwrapped()
        # through from_pretrained, so the library's own checkpoint key conversions apply
        saved = type(model).from_pretrained(str(path / "policy"), dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict())
        del saved
        ts = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(ts["optimizer"])
        self.step = int(ts["step"])
        jl = self.out / "metrics.jsonl"
        if jl.exists():
            self.records = [r for r in (json.loads(l) for l in jl.read_text().splitlines() if l.strip()) if r["step"] <= self.step]
            if self.is_main:
                jl.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        return self.step
