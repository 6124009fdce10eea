"""HiGRPOConfig + HiGRPOTrainer: two-step (global -> local) GRPO for autoregressive text-to-3D policies.

One training step:

1. sample ``prompts_per_step`` prompts; for each, G rollouts of the global step (step 1: semantic plan +
   coarse mesh tokens) and, conditioned on each plan, G rollouts of the local step (step 2: visual detail +
   refined mesh tokens);
2. decode both meshes, score the global step with the ``rewards_global`` terms (R_high in the paper) and the
   local step with the ``rewards_local`` terms (R_low);
3. dynamic sampling: drop groups whose rewards have zero variance in both steps, sample new prompts
   until the batch is full (at most ``max_sampling_rounds`` rounds; on several devices all ranks run the
   same rounds, decided together);
4. advantages A_global from R~ = R_global + lambda R_local and A_local from R_local, group-normalized;
5. ``mu`` optimizer updates of L_global + L_local (token-level clipped surrogate with k3 KL to the frozen start);
   the callbacks (:mod:`rewardkit.rl.callbacks`: guard, candidates, audit) see each step's samples.

Devices and parallelism come from Lightning Fabric (``accelerator``, ``devices``, ``strategy``,
``precision``, ``num_nodes``): each device rolls out its own prompt groups, the token normalizer is
summed over devices, and DDP averages gradients, so the loss is the global token-level mean.

The trainer builds the model and hands each part what it needs, one collaborator per concern:
:class:`~rewardkit.rl.rollout.Sampler` (sampling, scoring, dynamic sampling), :class:`~rewardkit.rl.update.Updater`
(advantages, reference, loss, optimizer step), :class:`~rewardkit.rl.checkpoint.Checkpointer` (checkpoints,
resume, export), :class:`~rewardkit.rl.reports.MetricsLog` (metrics log, summary, plot) and the callbacks
(:mod:`rewardkit.rl.callbacks`). They share one record per prompt group, :class:`~rewardkit.rl.GroupRollout`.
Around them: :mod:`rewardkit.rl.config` (the config), :mod:`~rewardkit.rl.engine` (precision, schedule, loggers,
activation checkpointing), :mod:`~rewardkit.rl.sharding` (FSDP) and :mod:`~rewardkit.rl.warm_start` (the CPU
demo's tiny policy, not part of a real run).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from rewardkit import config as _config
from rewardkit.rl.callbacks import Callback, default_callbacks
from rewardkit.rl.checkpoint import Checkpointer
from rewardkit.rl.config import STEP1_TEMPLATE, STEP2_TEMPLATE, HiGRPOConfig, WarmStartConfig, load_config
from rewardkit.rl.engine import (
    build_loggers,
    checkpoint_decoder_layers,
    checkpoint_dtype,
    decoder_layer_classes,
    lr_factor_fn,
    master_dtype,
    resolve_precision,
)
from rewardkit.rl.freezing import freeze_parameters
from rewardkit.rl.lora import apply_lora
from rewardkit.rl.policy import MeshPolicy
from rewardkit.rl.records import GroupRollout
from rewardkit.rl.reports import MetricsLog, gather_mean, reward_metrics, write_evaluation
from rewardkit.reporting.rl_run import RESERVED_TERM_NAMES
from rewardkit.rl.rewards import StepReward, build_step_reward
from rewardkit.rl.rollout import Sampler
from rewardkit.rl.seeds import seed_everything, step_seed
from rewardkit.rl.sharding import fsdp_strategy, is_sharded, load_sharded_weights
from rewardkit.rl.tokenizers import ShapeTokenizer, create_tokenizer
from rewardkit.rl.update import Updater
from rewardkit.rl.vllm_rollout import check_rollout_backend
from rewardkit.rl.warm_start import warm_start

# re-exported: `from rewardkit.rl.trainer import HiGRPOConfig, ...` keeps working
__all__ = ["HiGRPOConfig", "WarmStartConfig", "HiGRPOTrainer", "load_config", "STEP1_TEMPLATE", "STEP2_TEMPLATE",
           "checkpoint_dtype", "resolve_precision", "master_dtype", "decoder_layer_classes",
           "checkpoint_decoder_layers", "lr_factor_fn", "build_loggers"]

log = logging.getLogger(__name__)

LORA_FSDP_REFUSAL = (
    "strategy fsdp with lora is refused: LoRA trains only the adapters, so sharding would save only the frozen "
    "base's memory, while the sharded checkpoint, the merged export and the vLLM weight sync of PEFT adapters "
    "under FSDP are untested; use strategy ddp with lora, or fsdp for full fine-tuning")


class HiGRPOTrainer:
    """Hi-GRPO for a :class:`MeshPolicy`. Rewards default to the config's terms; pass ``rewards_global``/
    ``rewards_local`` (:class:`StepReward`) to use Python callables directly. ``callbacks`` are added after the
    built-in ones (:func:`~rewardkit.rl.callbacks.default_callbacks`) to :attr:`callbacks`."""

    def __init__(
        self,
        config: HiGRPOConfig,
        rewards_global: StepReward | None = None,
        rewards_local: StepReward | None = None,
        shape_tokenizer: ShapeTokenizer | None = None,
        fabric: Any = None,
        callbacks: Sequence[Callback] = (),
    ):
        from lightning.fabric import Fabric

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        config.policy_path = config.policy_path.replace("{output_dir}", config.output_dir)
        self.cfg = config
        self.out = Path(config.output_dir)
        check_rollout_backend(config.rollout, config.accelerator)  # vllm: installed, and a GPU
        self.precision = resolve_precision(config.precision, checkpoint_dtype(config.policy_path), config.accelerator)
        self.sharded = fabric is None and is_sharded(config.strategy)
        strategy = config.strategy
        if self.sharded and config.lora is not None:  # before any process starts: one line, exit code 2
            raise _config.ConfigError(LORA_FSDP_REFUSAL)
        if self.sharded:
            backend = "gloo" if config.accelerator == "cpu" or not torch.cuda.is_available() else None
            try:
                world = int(config.devices) * int(config.num_nodes)
            except (TypeError, ValueError):
                raise ValueError(f"strategy fsdp needs devices as a number, got {config.devices!r}") from None
            strategy = fsdp_strategy(self.precision, world, backend)
        self.fabric = fabric or Fabric(
            accelerator=config.accelerator, devices=config.devices, strategy=strategy,
            precision=self.precision, num_nodes=config.num_nodes, loggers=build_loggers(config),
        )
        if fabric is None:
            self.fabric.launch()
        # a VQVAE decodes on the policy's device unless its config names one
        self.shape_tokenizer = shape_tokenizer or create_tokenizer(config.shape_tokenizer, str(self.fabric.device))
        self.rewards = self._build_rewards(rewards_global, rewards_local)
        terms = {step: getattr(rew, "terms", []) for step, rew in self.rewards.items()}
        try:
            self.callbacks: list[Callback] = default_callbacks(config, terms) + list(callbacks)
        except ValueError as exc:
            raise _config.ConfigError(f"guard: {exc}") from exc
        self.prompts = config.resolve_prompts()
        self.step = 0
        self.metrics_log = MetricsLog(self.out)
        self._setup_policy()
        self.sampler = Sampler(config, self.policy, self.model, self.shape_tokenizer, self.rewards, self.prompts,
                               self.fabric)
        self.sampler.setup_backend(self.optimizer)
        self.updater = Updater(config, self.policy, self.model, self.optimizer, self.fabric, sharded=self.sharded,
                               reference_mode=self.reference_mode, ref_model=self.ref_model)
        self.checkpointer = Checkpointer(self.out, self.policy, self.model, self.optimizer, self.scheduler, self.fabric,
                                         sharded=self.sharded, keep_checkpoints=config.keep_checkpoints)

    def _build_rewards(self, rewards_global: StepReward | None, rewards_local: StepReward | None) -> dict[str, Any]:
        """Per step name its reward: the given one, or the config's terms (``rewards_global``, ``rewards_local``);
        a bad or reserved term name is a one-line ConfigError."""
        cfg, extra = self.cfg, {"resolution": self.shape_tokenizer.resolution}
        rewards = {}
        for step, given, key, spec in (("global", rewards_global, "rewards_global", self.cfg.rewards_global),
                                       ("local", rewards_local, "rewards_local", self.cfg.rewards_local)):
            try:
                rewards[step] = given or build_step_reward(spec, cfg.reward_on_error, extra)
            except ValueError as exc:  # a bad term in the config: a one-line ConfigError naming the section
                raise _config.ConfigError(f"{key}: {exc}") from exc
            clash = [t.name for t in getattr(rewards[step], "terms", []) if t.name in RESERVED_TERM_NAMES]
            if clash:
                raise _config.ConfigError(f"{key}: term name {clash[0]!r} is reserved (the trainer logs "
                                          f"{step}/{clash[0]}); reserved: {', '.join(RESERVED_TERM_NAMES)}")
        return rewards

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
                warm_start(path, cfg, self.prompts, self.shape_tokenizer, self.fabric.device)
            self.fabric.barrier()
        load = dict(tokens_per_object=cfg.tokens_per_object, codebook_size=cfg.codebook_size,
                    use_chat_template=cfg.use_chat_template)
        # FSDP: built on the meta device, sharded, then filled from rank 0 (rewardkit.rl.sharding)
        self.policy = MeshPolicy.from_pretrained(path, dtype=cfg.dtype or master_dtype(self.precision),
                                                 meta=self.sharded, **load)
        self.policy.logprob_chunk_tokens = cfg.logprob_chunk_tokens
        if self.policy.tokens_per_object != self.shape_tokenizer.num_tokens:
            raise ValueError(
                f"the policy emits {self.policy.tokens_per_object} mesh tokens per object but the shape tokenizer "
                f"takes {self.shape_tokenizer.num_tokens}"
            )
        if self.policy.vocab.codebook_size < self.shape_tokenizer.codebook_size:
            raise ValueError("the policy vocabulary has fewer <meshN> tokens than the shape tokenizer's codebook")
        model = self.policy.model
        self.frozen = freeze_parameters(model, cfg.freeze)
        if cfg.activation_checkpointing:
            checkpoint_decoder_layers(model)
        if cfg.lora is not None:
            model = apply_lora(model, cfg.lora)
            self.policy.model = model
        mode = cfg.reference if cfg.reference != "auto" else ("adapter" if cfg.lora is not None else "copy")
        if mode not in ("copy", "cpu", "adapter"):
            raise ValueError(f"reference must be auto, copy, cpu or adapter, got {cfg.reference!r}")
        if mode == "adapter" and cfg.lora is None:
            raise ValueError("reference: adapter needs lora (the reference is the base model with adapters disabled)")
        self.reference_mode = None if cfg.beta == 0.0 else mode
        self.ref_model = None
        ref_dtype = "bfloat16" if self.precision.startswith("bf16") else (cfg.dtype or master_dtype(self.precision))
        if self.sharded and self.reference_mode == "copy":
            # never a full copy on one device: built on the meta device in the compute dtype (bf16 under
            # bf16-mixed: the values the policy's bf16 all-gather computes with at step 0), sharded like
            # the policy, filled from rank 0 below
            ref = MeshPolicy.from_pretrained(path, dtype=ref_dtype, meta=True, **load).model
            self.ref_model = self.fabric.setup_module(ref.eval().requires_grad_(False))
        elif self.sharded and self.reference_mode == "cpu":  # a full copy in this rank's host memory, by choice
            self.ref_model = MeshPolicy.from_pretrained(path, dtype=ref_dtype, **load).model.eval().requires_grad_(False)
        elif self.reference_mode in ("copy", "cpu"):
            dev = self.fabric.device if mode == "copy" else torch.device("cpu")
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(dev)
        model.eval()  # dropout off: the ratio must compare the same function (see docs/hi-grpo.md)

        def adamw(params: Any) -> torch.optim.Optimizer:
            return torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, betas=cfg.adam_betas,
                                     weight_decay=cfg.weight_decay)

        if self.sharded:  # the optimizer is built on the sharded parameters
            self.model = self.fabric.setup_module(model)
            shards = [self.model] + ([self.ref_model] if self.reference_mode == "copy" else [])
            ckpt = checkpoint_dtype(path)
            load_sharded_weights(shards, lambda: MeshPolicy.from_pretrained(path, dtype=ckpt, **load).model)
            opt = adamw(self.model.parameters())
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor_fn(cfg))
            self.optimizer = self.fabric.setup_optimizers(opt)
        else:
            opt = adamw(model.parameters())
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor_fn(cfg))
            self.model, self.optimizer = self.fabric.setup(model, opt)
        self.policy.synced_generation = self.sharded and self.fabric.world_size > 1

    # -- the parts, by name ------------------------------------------------------------------------
    @property
    def records(self) -> list[dict[str, Any]]:
        """Every logged step's metrics row, in order (:class:`~rewardkit.rl.reports.MetricsLog`)."""
        return self.metrics_log.records

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The trained module without Fabric's wrapper (the PEFT model under LoRA)."""
        return self.checkpointer.unwrapped()

    def rollout(self, prompts: Sequence[str], group_size: int, seed: int) -> list[GroupRollout]:
        """G two-step samples for each prompt, decoded and scored (:meth:`Sampler.rollout`)."""
        return self.sampler.rollout(prompts, group_size, seed)

    def collect(self, step: int) -> tuple[list[GroupRollout], dict[str, Any]]:
        """One optimizer step's rollouts with dynamic sampling (:meth:`Sampler.collect`)."""
        return self.sampler.collect(step)

    def optimize(self, groups: Sequence[GroupRollout]) -> dict[str, float]:
        """``mu`` optimizer steps on ``groups`` (:meth:`Updater.optimize`)."""
        return self.updater.optimize(groups)

    def save_policy(self, path: str | Path) -> Path | None:
        """A plain Hugging Face checkpoint of the current policy (:meth:`Checkpointer.save_policy`)."""
        return self.checkpointer.save_policy(path)

    def save_checkpoint(self) -> Path | None:
        """``output_dir/checkpoints/step-N/`` at the current step (:meth:`Checkpointer.save_checkpoint`)."""
        return self.checkpointer.save_checkpoint(self.step)

    def load_checkpoint(self, path: str | Path | None = None) -> int:
        """Restore weights, optimizer, schedule, step and the metrics log from ``path`` (default: latest)."""
        step = self.checkpointer.load_checkpoint(path)
        if step is None:
            return 0
        self.step = step
        self.metrics_log.reload(step, write=self.is_main)
        return step

    def term_weights(self) -> dict[str, dict[str, float]]:
        """Per step name, its reward terms' weights."""
        return {step: {t.name: t.weight for t in getattr(rew, "terms", [])} for step, rew in self.rewards.items()}

    def generator_name(self) -> str:
        """The policy that sampled this step's rollouts: the start checkpoint after ``self.step`` updates."""
        return f"{self.cfg.policy_path}@step-{self.step}"

    def _notify(self, hook: str, *args: Any) -> dict[str, float]:
        """Call ``hook`` on every callback that has it, in order; the metrics they return, merged."""
        out: dict[str, float] = {}
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                out |= fn(self, *args) or {}
        return out

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_heldout(self) -> dict[str, float]:
        """Fixed-seed samples of ``heldout_prompts`` (never trained on): their reward metrics as heldout/*."""
        cfg = self.cfg
        groups = self.rollout(cfg.heldout_prompts, cfg.heldout_group_size,
                              step_seed(cfg.seed, 2 * 10**6, self.fabric.global_rank))
        return {f"heldout/{k}": v for k, v in gather_mean(self.fabric, reward_metrics(groups, cfg.lam)).items()}

    @torch.no_grad()
    def evaluate(self, name: str) -> dict[str, float]:
        """Fixed-seed samples of the eval prompts: mean rewards, plus (rank 0) renders and a JSON of samples
        under ``output_dir/name`` (:func:`~rewardkit.rl.reports.write_evaluation`)."""
        cfg = self.cfg
        prompts = cfg.eval_prompts or self.prompts[:6]
        groups = self.rollout(prompts, cfg.eval_group_size, step_seed(cfg.seed, 10**6, self.fabric.global_rank))
        metrics = gather_mean(self.fabric, reward_metrics(groups, cfg.lam))
        if self.is_main:
            when = {"samples_before": "before training", "samples_after": f"after {self.step} steps"}.get(name, name)
            write_evaluation(self.out / name, groups, metrics, lam=cfg.lam, weights=self.term_weights(),
                             render=cfg.render, render_size=cfg.render_size,
                             title=f"Hi-GRPO samples {when}: mean global reward "
                                   f"{metrics.get('global/reward', math.nan):+.2f}, mean local reward "
                                   f"{metrics.get('local/reward', math.nan):+.2f} (fixed seed)")
        self._notify("on_evaluate", name, groups, metrics)
        return metrics

    def _local_parameter_fraction(self) -> float:
        """Share of the policy's parameter elements held by this rank (1.0 unsharded, ~1/N under FSDP)."""
        local = full = 0
        for p in self.model.parameters():
            full += p.numel()
            local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        return local / max(1, full)

    # -- training ----------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.time()
        seed_everything(step_seed(cfg.seed, self.step, self.fabric.global_rank))
        groups, info = self.collect(self.step)
        sampled = info["sampled"]
        metrics: dict[str, float] = {k: float(v) for k, v in info.items() if k != "sampled"}
        metrics |= reward_metrics(sampled, cfg.lam)  # what the policy produced this step
        metrics |= self._notify("on_rollouts", self.step + 1, sampled)  # reward-hacking guard, candidates, audit
        t1 = time.time()
        n_groups = len(groups)
        if self.fabric.world_size > 1:  # all devices update together or not at all (DDP collectives)
            import torch.distributed as dist

            t = torch.tensor(n_groups, device=self.fabric.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            n_groups = int(t)
            if self.sharded:  # FSDP all-gathers per forward: every rank must run the same micro-batches
                groups = groups[:n_groups]
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if n_groups:
            metrics |= self.optimize(groups)
        else:
            metrics["skipped_update"] = 1.0
        self.scheduler.step()
        metrics["seconds/rollout"] = t1 - t0
        metrics["seconds/update"] = time.time() - t1
        metrics = gather_mean(self.fabric, metrics)
        self.step += 1
        if cfg.heldout_prompts and cfg.eval_every and self.step % cfg.eval_every == 0:
            metrics |= self.evaluate_heldout()
        metrics = {"step": self.step, **metrics}
        self.metrics_log.append(metrics, write=self.is_main)
        self.fabric.log_dict({k: v for k, v in metrics.items() if k != "step"}, step=self.step)
        self._notify("on_step_end", self.step, sampled, metrics)
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

            for name in ("metrics.jsonl", "metrics.csv", "metrics.json", "reward_curve.png", "guard.jsonl"):
                (self.out / name).unlink(missing_ok=True)
            for name in ("samples_before", "samples_after", "checkpoints", "candidates", "audit"):
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
                log.info("step %d  global %.4f  local %.4f  loss %.4f", m["step"], m.get("global/reward", math.nan),
                         m.get("local/reward", math.nan), m.get("loss", math.nan))
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save_checkpoint()
        if not cfg.save_every or self.step % cfg.save_every:
            self.save_checkpoint()
        if cfg.eval_group_size > 0:
            summary["eval_after"] = self.evaluate("samples_after")
        if self.sharded:
            self.save_policy(self.out / "policy")  # a collective: every rank gathers, rank 0 writes
        elif self.is_main:
            self.save_policy(self.out / "policy")
        summary |= self.metrics_log.summary(self.step) if self.is_main else {}
        self._notify("on_train_end", summary)
        if self.is_main:
            summary["parameters_on_rank0"] = self._local_parameter_fraction()
            (self.out / "metrics.json").write_text(json.dumps(summary, indent=2))
            self.metrics_log.plot()
        return summary

