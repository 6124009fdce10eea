"""The Hi-GRPO run configuration: :class:`HiGRPOConfig` (every field commented where it is defined),
:class:`WarmStartConfig` for the CPU demo's tiny policy, and :func:`load_config` for YAML/JSON files."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence


from rewardkit import config as _config
from rewardkit.rl.candidates import CandidatesConfig
from rewardkit.rl.guards import GuardConfig
from rewardkit.rl.lora import LoRAConfig
from rewardkit.rl.policy import SamplingConfig
from rewardkit.rl.rewards import RewardTerm, RewardTermConfig
from rewardkit.rl.tokenizers import ShapeTokenizerConfig
from rewardkit.demo.shapes import DEMO_SHAPES
from rewardkit.rl.vllm_rollout import RolloutConfig

__all__ = ["HiGRPOConfig", "WarmStartConfig", "load_config", "STEP1_TEMPLATE", "STEP2_TEMPLATE"]

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
    """Everything that defines a Hi-GRPO run (rewardkit rl --config, the pipeline's ``rl:`` section).

    Defaults are the paper's values where it gives one (AR3D-R1; docs/hi-grpo.md lists the sources and
    the choices the paper leaves open). Each field's comment says what it does.
    """

    # -- policy ----------------------------------------------------------------------------------
    policy_path: str = ""  # local Hugging Face checkpoint directory; "{output_dir}" is substituted
    tokens_per_object: int = 1024  # ShapeLLM-Omni: 1024
    codebook_size: int | None = None  # None: every <meshN> token in the vocabulary
    # mesh tokens <-> occupancy -> mesh: {type: voxel_blocks, resolution, block} or {type: shapellm_vqvae,
    # weights: PATH, config, key_map, device} (rewardkit.rl.tokenizers.ShapeTokenizerConfig)
    shape_tokenizer: ShapeTokenizerConfig = field(default_factory=ShapeTokenizerConfig)
    # dtype of the trained (master) weights. None: float32 unless ``precision`` is a "-true" low
    # precision (``bf16-true``, ``16-true``), so a bf16 checkpoint trains with fp32 weights and fp32
    # AdamW states under ``bf16-mixed`` (in pure bf16, updates at lr 1e-6 round away)
    dtype: str | None = None
    use_chat_template: bool | None = None  # wrap contexts in the tokenizer's chat template; None: if it has one
    # parameters kept fixed: groups (vision_tower, embeddings, lm_head) or fnmatch patterns over parameter
    # names; None: the released recipe's choice (vision tower + lm_head for Qwen2.5-VL, nothing otherwise)
    freeze: list[str] | None = None
    # LoRA adapters (PEFT) instead of full fine-tuning: {r, alpha, dropout, target_modules}; None: off
    lora: LoRAConfig | None = None
    # the KL reference policy: "auto" (adapter with LoRA, else copy), "copy" (a frozen copy on the
    # training device), "cpu" (a frozen copy in host memory, its forward on the CPU), "adapter" (LoRA
    # only: the base model with the adapters disabled, no second copy)
    reference: Literal["auto", "copy", "cpu", "adapter"] = "auto"
    # recompute each decoder layer's activations in the backward pass (torch's checkpoint wrapper around
    # the classes in the model's ``_no_split_modules``): activation memory of one layer instead of all
    activation_checkpointing: bool = False
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # temperatures, top-p/k, reasoning budget
    # the rollout sampler: {backend: hf (Hugging Face generate, default, any device) | vllm (a colocated vLLM
    # engine per GPU, weights synced after every update), vllm settings}; rewardkit.rl.vllm_rollout
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    # -- prompts ---------------------------------------------------------------------------------
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None  # one prompt per line, or a JSON list
    step1_template: str = STEP1_TEMPLATE  # step-1 context; {prompt}
    step2_template: str = STEP2_TEMPLATE  # step-2 context; {prompt}, {plan} (step 1's reasoning text)
    # -- rewards ---------------------------------------------------------------------------------
    # R_high: step 1's (global) terms; R_low: step 2's (local) terms. Each a rewardkit.rl.RewardTermConfig:
    # exactly one of builtin / fn / scorer / url, with args, name, weight, dims, learned, uncertainty_penalty
    rewards_global: list[RewardTermConfig] = field(default_factory=list)
    rewards_local: list[RewardTermConfig] = field(default_factory=list)
    reward_on_error: Literal["raise", "mark"] = "raise"  # raise, or mark: a failed reward is NaN and its sample trains on nothing
    # decode + score step 1 in a worker thread while step 2 generates (all reward calls run in that one
    # thread); False: everything in the calling thread, one after the other
    overlap_rewards: bool = True
    # -- Hi-GRPO (paper values as defaults) ------------------------------------------------------
    group_size: int = 8  # G: samples per prompt (the advantage normalizes within a group)
    prompts_per_step: int = 2  # groups per device per optimizer step
    lam: float = 1.0  # lambda: R~_high = R_high + lam * R_low (step 1 also sees step 2's reward)
    beta: float = 0.01  # weight of the k3 KL to the reference policy (0: no reference at all)
    # AR3D-R1 Table 2's ablation switches, the paper's best recipe (26.5 CLIP) as defaults: decoupled clip
    # (eps_high > eps_low; eps_high = eps_low is the symmetric clip), dynamic_sampling, loss_aggregation,
    # KL removal (beta: 0) and importance_sampling_level (docs/hi-grpo.md, "Algorithm ablation")
    eps_low: float = 0.2  # decoupled clip: ratio lower bound 1 - eps_low
    eps_high: float = 0.28  # ratio upper bound 1 + eps_high (DAPO's clip-higher)
    # token: the loss is the sum over every valid token of the step / the total token count (DAPO's
    # token-level average); sequence: the mean over sequences of each sequence's token mean (vanilla GRPO)
    loss_aggregation: Literal["token", "sequence"] = "token"
    # token: one importance ratio per token; sequence: GSPO's length-normalized sequence ratio
    # exp(mean_t log r_it), clipped per sequence
    importance_sampling_level: Literal["token", "sequence"] = "token"
    adv_eps: float = 1e-4  # epsilon in (r - mean) / (std + eps)
    mu: int = 1  # optimizer updates per rollout batch (> 1 makes the clip act)
    dynamic_sampling: bool = True  # drop groups without reward signal and refill (DAPO)
    max_sampling_rounds: int = 4  # at most this many rollout rounds per step to fill prompts_per_step
    # a group whose reward std (in R~_high and in R_low) is at most this is dropped: continuous rewards
    # are never exactly equal, so a tolerance is what makes dynamic sampling act at all
    dynamic_sampling_min_std: float = 1e-3
    # [low, high] or None: also drop groups whose mean R~_high lies outside (DAPO drops all-solved and
    # all-failed groups; OpenRLHF's dynamic_filtering_reward_range); None keeps every level
    dynamic_sampling_reward_range: list[float] | None = None
    lr: float = 1e-6  # AdamW peak learning rate
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # constant | cosine | linear: decay after the warmup, over ``steps``
    lr_warmup_steps: int = 0  # linear warmup from lr / warmup to lr over this many optimizer steps
    lr_min_ratio: float = 0.0  # cosine / linear decay ends at lr * lr_min_ratio
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    max_grad_norm: float = 1.0  # gradient clipping by global norm (0: off)
    micro_batch_size: int = 16  # sequences per forward/backward
    # scored tokens per chunk of the output layer when computing log-probs: the [chunk, vocabulary] logits are
    # the largest vocabulary-wide tensors (rewardkit.rl.logprobs.sequence_logprobs); smaller saves memory, larger
    # fewer kernel launches
    logprob_chunk_tokens: int = 512
    # -- run -------------------------------------------------------------------------------------
    steps: int = 1200  # optimizer steps of the run (also the horizon of the cosine/linear schedule)
    seed: int = 0  # every step reseeds from (seed, step, rank): resumed runs repeat exactly
    output_dir: str = "out/rl"  # logs, checkpoints, samples, final policy
    save_every: int = 100  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # how many step-N checkpoints to keep
    eval_group_size: int = 4  # samples per prompt in the before/after evaluation (0: skip it)
    eval_prompts: list[str] = field(default_factory=list)  # default: the first 6 training prompts
    # periodic evaluation during training on prompts that are never trained on (must not overlap
    # ``prompts``): every ``eval_every`` steps, ``heldout_group_size`` fixed-seed samples per prompt, logged
    # as heldout/* in the same metrics.csv / loggers
    heldout_prompts: list[str] = field(default_factory=list)
    eval_every: int = 0  # 0: no periodic held-out evaluation
    heldout_group_size: int = 4  # samples per held-out prompt
    # experiment trackers through Lightning Fabric: "tensorboard" (output_dir/logs/tensorboard), "wandb"
    # (needs `pip install wandb`; WANDB_MODE=offline works without network), "csv"
    loggers: list[str] = field(default_factory=list)
    wandb_project: str = "rewardkit-hi-grpo"  # W&B project name when loggers has wandb
    # the policy's samples written as candidates (output_dir/candidates/: meshes + candidates.csv in the
    # own-generations format of rewardkit.data.candidates.read_generations): {every, eval, meshes}
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    # reward-hacking guard (rewardkit.rl.guards): learned terms against their anchors, per-step flags and
    # the audit of the highest-reward samples: {enabled, learned, anchors, window, min_change, std_jump,
    # audit_every, audit_top_k}
    guard: GuardConfig = field(default_factory=GuardConfig)
    render: bool = True  # render the before/after samples as PNG grids
    render_size: int = 160  # pixels per rendered view
    # -- engine (Lightning Fabric) ---------------------------------------------------------------
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"  # Lightning's names (gpu = cuda)
    devices: int | str | list[int] = 1  # devices per node (or a list of device indices)
    strategy: str = "auto"  # auto / ddp (replicas) / fsdp (PyTorch FSDP2 full shard, rewardkit.rl.sharding)
    # "auto": bf16-mixed for a bf16 checkpoint (16-mixed for fp16 on CUDA), else 32-true; or any
    # Lightning precision ("32-true", "bf16-mixed", "bf16-true", ...)
    precision: str = "auto"
    num_nodes: int = 1  # machines (launch with torchrun on each)
    num_threads: int | None = None  # torch CPU threads; 1 is fastest for tiny models on a busy machine
    # -- warm start ------------------------------------------------------------------------------
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)  # the CPU demo's tiny policy

    # keys of earlier releases: an error naming the new key (rewardkit.config)
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"rewards_high": "rewards_global", "rewards_low": "rewards_local"}

    def __post_init__(self) -> None:
        # a config built in Python (HiGRPOConfig(rewards_global=[{...}])) is read by the same grammar
        for key in ("rewards_global", "rewards_local"):
            setattr(self, key, [t if isinstance(t, (RewardTermConfig, RewardTerm))
                                else _config.from_dict(RewardTermConfig, t, key=f"{key}[{i}]")
                                for i, t in enumerate(getattr(self, key))])
        if isinstance(self.shape_tokenizer, Mapping):
            self.shape_tokenizer = _config.from_dict(ShapeTokenizerConfig, self.shape_tokenizer, key="shape_tokenizer")

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
                prompts += json.loads(text) if self.prompts_file.endswith(".json") else [line.strip() for line in text.splitlines() if line.strip()]
            except (OSError, ValueError) as exc:
                raise _config.ConfigError(f"prompts_file {self.prompts_file}: {getattr(exc, 'strerror', None) or exc}") from exc
        if not prompts:
            raise _config.ConfigError("no training prompts: set prompts or prompts_file")
        overlap = sorted(set(prompts) & set(self.heldout_prompts))
        if overlap:
            raise _config.ConfigError(f"heldout_prompts must never be trained on, but these are also training prompts: {overlap}")
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
