"""Per-device memory plan of a Hi-GRPO run: parameters, gradients, AdamW states, the reference policy,
activations and the log-softmax logits, for DDP, FSDP (full shard) and LoRA, from the model's
architecture alone (built on the meta device: no weights, no accelerator).

The formula (bytes, per device; W = devices sharding the model (1 for DDP/LoRA), P = all parameters,
T = trainable parameters, m = 4 (fp32 master weights; 2 under ``bf16-true``), a = 2 under ``bf16-mixed``
(bf16 activations and logits: :func:`rewardkit.rl.logprobs.forward_logits` skips Lightning Fabric's cast of the
module's outputs to fp32), 4 under ``32-true``; r = bytes of the residual stream: a under FSDP
(bf16 all-gathered parameters), 4 under DDP ``bf16-mixed`` (fp32 master embeddings), 4 under ``32-true``;
H hidden, I MLP width, Hkv = kv_heads * head_dim, V vocabulary, N layers, b micro-batch, L sequence):

persistent (whole run)
    params      m * P / W
    optimizer   8 * T / W       (AdamW exp_avg + exp_avg_sq, fp32)
    buckets     DDP only: 4 * T (Fabric's DDP keeps ``gradient_as_bucket_view=False``)
    reference   ``reference: copy``: FSDP: 2 * P / W under bf16 (built sharded in the compute dtype, never a
                full copy on one device), else m * P / W; DDP: m * P (a deep copy); 0 for ``cpu``/``adapter``
    vllm        ``rollout.backend: vllm`` with ``sleep_level`` 0: ``gpu_memory_utilization`` * device memory
grads       4 * T / W, freed by ``zero_grad(set_to_none=True)`` at the start of each update and rebuilt by the
            first micro-batch's backward: alive in every later micro-batch (Hi-GRPO has at least two, step 1
            and step 2), the optimizer step and the next rollout. FSDP reduce-scatters after every
            micro-batch, so they stay sharded; the previous code skipped that until the last micro-batch, and
            FSDP2 then holds unsharded fp32 gradients, 4 * T (``fsdp_sync_every_micro_batch=False``)
training forward/backward, on top of the persistent part
    unsharded   FSDP: p * (root + 2 * layer)               p = 2 under bf16-mixed (bf16 all-gather), else m;
                                                       root = parameters outside every decoder/vision
                                                       block (embeddings, lm_head, final norm, merger),
                                                       kept gathered through forward and backward; two
                                                       decoder layers in flight (current + prefetched)
                DDP ``bf16-mixed``: 2 * (lm_head + (all layer linears unless checkpointed)): autocast's
                bf16 weight copies
    saved acts  b * L * [N * s + 4H + 2rH + aH + 2r d_head] + b * L * L  (final norm, embeddings, RoPE
                cos/sin, bool mask), s per layer and token:
                s = 2(4H + 4 + rH) + 2aH (5aH when autocast casts an fp32 residual per linear)
                    + 4aH + 4 n_heads + aL + 4aI
                    (two RMSNorms: fp32 input, rsqrt, normalized, the linears' inputs; q, k, v
                    (repeat_kv'd to H wide for GQA under a padding mask), output and logsumexp of
                    memory-efficient attention; sdpa's float copy of the [L, L] mask; SwiGLU MLP;
                    MHA: 2aH + 2aHkv instead of 4aH). Checked against autograd's saved tensors.
                With activation checkpointing s = rH (the layer input only), plus b * L * s for the
                one layer recomputed in the backward
    log-probs   selective and chunked (:func:`logprob_bytes`; n = scored tokens of the micro-batch,
                c = min(chunk, n)): a*n*H (the scored hidden states) + (12 + k)*c*V in the forward,
                (16 + k)*c*V while the backward recomputes a chunk (k = 1 with ``constrain_logprobs``), plus
                a*b*L*H for the hidden states' gradient; never a [b, L, V] tensor
    root gather FSDP, at the start of every forward: p * root * (1 + 1 / W) for the all-gather's input and
                output buffers while they are copied out into the p * root unsharded parameters
    layer grads FSDP: (p + 4) * layer (the unsharded gradient + its fp32 reduce-scatter input); the output
                layer's unsharded gradient p * lm_head (if trained) from the log-prob backward on; at the end
                of the backward (p + 4) * trainable root parameters (the embedding gradient)
optimizer step: + 4 * T / W for foreach AdamW's temporary (CUDA; on CPU the per-parameter loop: one
    parameter's worth)
rollout     HF generate (no grad): KV cache 2 * N * Hkv * kv_bytes * (rollouts * (context + new tokens)),
                kv_bytes = 2 under FSDP (bf16 compute parameters), m under DDP (generation bypasses autocast)
            vLLM: the engine's ``gpu_memory_utilization`` * device memory (its weights and KV cache) while it
                samples; with ``sleep_level`` >= 1 it gives that back while the policy trains

peak = persistent + max(training forward end, training backward (+ grads), optimizer step (+ grads),
rollout (+ grads)).
The sequence of step 1 is prompt + reasoning + <mesh-start> + M codes + <mesh-end>; step 2's context also
holds step 1's plan (up to ``max_reasoning_tokens`` more), so step 2 sets the peak.
Not counted: the CUDA context and NCCL buffers (about 1-2 GB per GPU, see ``overhead_gb``), allocator
fragmentation, reward models on the same GPU (the paper serves them elsewhere).
benchmarks/bench_rl_memory.py checks the training terms against real FSDP steps on 2 gloo processes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from rewardkit.rl.lora import lora_target_names

__all__ = [
    "QWEN2_5_VL_7B_CONFIG",
    "SHAPELLM_OMNI_VOCAB",
    "ModelCounts",
    "MemoryPlan",
    "shapellm_omni_config",
    "build_meta_model",
    "count_model",
    "plan_memory",
    "plan_for_config",
    "saved_bytes_per_layer",
    "layer_activation_bytes",
    "step_lengths",
    "GB",
]

GB = 1e9

# ShapeLLM-Omni's vocabulary: Qwen2.5-VL's 151,665 tokens + 8192 mesh codes + <mesh-start>, <mesh-end>
# (its generation passes id 159858 = <mesh-end> as an extra EOS; docs/../shared reference §1.1)
SHAPELLM_OMNI_VOCAB = 151_665 + 8192 + 2

# Qwen/Qwen2.5-VL-7B-Instruct config.json (huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json),
# the backbone of ShapeLLM-Omni (yejunliang23/ShapeLLM-7B-omni). Cross-checked against a printed module tree
# of the 7B model (github.com/acproject/duorou docs/qwen2.5vl_graph.md: 28 decoder layers, q 3584->3584,
# k/v 3584->512, MLP 3584->18944, 32 vision blocks of width 1280 with MLP 3420, merger 5120->3584) and
# transformers' Qwen2_5_VLVisionConfig defaults (depth 32, hidden 1280, intermediate 3420, 16 heads,
# out_hidden 3584, patch 14, spatial_merge 2, window 112, full attention in blocks 7/15/23/31).
# The published 7B embeds 152,064 rows (padded); ShapeLLM-Omni's resized vocabulary replaces it here.
QWEN2_5_VL_7B_CONFIG: dict[str, Any] = {
    "model_type": "qwen2_5_vl",
    "tie_word_embeddings": False,
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "hidden_act": "silu",
    },
}

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shapellm_omni_config(vocab_size: int = SHAPELLM_OMNI_VOCAB) -> Any:
    """Qwen2.5-VL-7B-Instruct's config with ShapeLLM-Omni's vocabulary and an untied ``lm_head``."""
    from transformers import Qwen2_5_VLConfig

    d = copy.deepcopy(QWEN2_5_VL_7B_CONFIG)
    d.pop("model_type")
    d["text_config"]["vocab_size"] = vocab_size
    return Qwen2_5_VLConfig(**d)


def build_meta_model(config: Any) -> nn.Module:
    """The model of ``config`` on the meta device (shapes only, no memory)."""
    from transformers import AutoModelForCausalLM, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        if isinstance(config, Qwen2_5_VLConfig):
            return Qwen2_5_VLForConditionalGeneration(config)
        return AutoModelForCausalLM.from_config(config)


@dataclass
class ModelCounts:
    """Exact parameter counts of a policy and the shape figures the activation formula needs."""

    total: int
    trainable: int  # under the freeze rule (full fine-tuning)
    frozen: int
    lora_trainable: int  # adapter parameters of LoRA with ``lora_r`` on ``lora_targets``
    lora_r: int
    layer: int  # parameters of the largest decoder layer (one FSDP unit)
    root: int  # parameters outside every decoder / vision block (the FSDP root unit)
    layer_linear: int  # linear weights of all decoder layers (autocast's bf16 copies)
    lm_head: int
    embeddings: int
    root_trainable: int  # trainable parameters of the FSDP root unit (their unsharded gradients live to its end)
    head_trainable: int  # trainable parameters of the output layer (0 when lm_head is frozen)
    vision: int
    hidden: int
    intermediate: int
    num_layers: int
    num_heads: int
    kv_dim: int  # num_key_value_heads * head_dim
    vocab: int
    frozen_groups: list[str] = field(default_factory=list)


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def count_model(model: nn.Module, freeze: Sequence[str] | None = None, lora_r: int = 16,
                lora_targets: Sequence[str] = LORA_TARGETS) -> ModelCounts:
    """Count ``model``'s parameters (works on the meta device). ``freeze`` as ``HiGRPOConfig.freeze``
    (None: the released recipe's default). LoRA adapters are counted as PEFT places them: every
    ``nn.Linear`` whose name ends with a target gets r * (in + out) parameters."""
    from rewardkit.rl.freezing import default_freeze, freeze_parameters

    model = copy.deepcopy(model) if not next(model.parameters()).is_meta else model
    entries = default_freeze(model) if freeze is None else list(freeze)
    freeze_parameters(model, entries)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    unit_names = set(getattr(model, "_no_split_modules", None) or [])
    in_unit: set[str] = set()
    layer = layer_linear = 0
    for name, mod in model.named_modules():
        if type(mod).__name__ in unit_names:
            n = sum(p.numel() for p in mod.parameters())
            in_unit.update(f"{name}.{k}" if name else k for k, _ in mod.named_parameters())
            if "visual" not in name.split("."):
                layer = max(layer, n)
                layer_linear += sum(m.weight.numel() for m in mod.modules() if isinstance(m, nn.Linear))
    root = sum(p.numel() for n, p in params.items() if n not in in_unit)
    lora = 0
    targets = set(lora_target_names(model, lora_targets))  # the modules rewardkit.rl.lora adapts
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name in targets:
            lora += lora_r * (mod.in_features + mod.out_features)
    root_trainable = sum(p.numel() for n, p in params.items() if n not in in_unit and p.requires_grad)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    head_trainable = head.weight.numel() if head is not None and head.weight.requires_grad else 0
    vision = sum(p.numel() for n, p in params.items() if any(k in n.split(".") for k in ("visual", "vision_tower")))
    tc = _text_config(model.config)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return ModelCounts(
        total=total, trainable=trainable, frozen=total - trainable, lora_trainable=lora, lora_r=lora_r,
        layer=layer, root=root, layer_linear=layer_linear,
        lm_head=head.weight.numel() if head is not None else 0, embeddings=emb.weight.numel(), vision=vision,
        root_trainable=root_trainable, head_trainable=head_trainable,
        hidden=tc.hidden_size, intermediate=tc.intermediate_size, num_layers=tc.num_hidden_layers,
        num_heads=tc.num_attention_heads, kv_dim=tc.num_key_value_heads * head_dim, vocab=emb.weight.shape[0],
        frozen_groups=entries,
    )


@dataclass
class MemoryPlan:
    """Per-device bytes of one configuration: ``persistent`` components, the extra of each ``phase``,
    and the ``peak`` (persistent + the largest phase)."""

    name: str
    persistent: dict[str, float]
    phases: dict[str, dict[str, float]]
    settings: dict[str, Any]

    @property
    def persistent_total(self) -> float:
        return sum(self.persistent.values())

    def phase_total(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_total)

    @property
    def peak(self) -> float:
        return self.persistent_total + self.phase_total(self.peak_phase)

    def fits(self, gpu_bytes: float, overhead: float = 0.0) -> bool:
        return self.peak + overhead <= gpu_bytes

    def headroom(self, gpu_bytes: float, overhead: float = 0.0) -> float:
        return gpu_bytes - self.peak - overhead


def layer_activation_bytes(c: ModelCounts, a: int, r: int, seq_len: int, lora_r: int = 0) -> float:
    """Bytes per token autograd saves inside one decoder layer (no checkpointing); checked against
    :func:`saved_bytes_per_layer` in the tests."""
    H, I, Hkv = c.hidden, c.intermediate, c.kv_dim  # noqa: E741 - I: the MLP width, as in the formula above
    norms = 2 * (4 * H + 4 + r * H)  # fp32 input, rsqrt, normalized
    # the linears' inputs: one shared tensor per norm, or (autocast over an fp32 residual) one bf16 cast
    # per linear: q, k, v and gate, up
    norms += (5 if r != a else 2) * a * H
    # RoPE saves only cos/sin (shared by all layers: counted outside); memory-efficient attention saves
    # q, k, v, its output (the o_proj input shares it) and the logsumexp, plus the float copy of the
    # padding mask sdpa makes per call ([b, 1, L, L]: a * L per token)
    if Hkv < H:  # grouped-query attention under a padding mask: repeat_kv copies k and v to H wide
        attn = 4 * a * H
    else:
        attn = 2 * a * H + 2 * a * Hkv
    attn += 4 * c.num_heads + a * seq_len
    mlp = 4 * a * I
    lora = 7 * a * lora_r if lora_r else 0  # the A projections' outputs
    return norms + attn + mlp + lora


def logprob_bytes(n_scored: int, chunk: int, V: int, H: int, a: int, constrained: bool = True,
                  entropy: bool = True) -> dict[str, float]:
    """Bytes of the per-token log-probs as :func:`rewardkit.rl.logprobs.sequence_logprobs` computes them
    (selective and chunked): the scored positions' hidden states (``a * n * H``, kept for the backward), plus
    one chunk of ``c = min(chunk, n)`` positions' vocabulary-wide temporaries: in the forward the fp32
    logits, the blocked-token mask (1 byte, if ``constrained``) and logsumexp's / the entropy's two fp32
    temporaries (``(12 + m) c V``); in the backward, when the chunk is recomputed, the fp32 logits and the
    mask kept for it, the gather's and logsumexp's fp32 gradients and their sum (``(16 + m) c V``)."""
    c = float(min(max(1, chunk), max(1, n_scored)))
    m = 1 if constrained else 0
    kept = float(a) * n_scored * H + 8.0 * n_scored
    return {"forward": kept + (12 + m) * c * V, "backward": kept + (16 + m) * c * V}


def plan_memory(
    counts: ModelCounts,
    *,
    strategy: str = "fsdp",
    world_size: int = 8,
    precision: str = "bf16-mixed",
    micro_batch_size: int = 1,
    seq_len: int,
    scored_len: int | None = None,
    activation_checkpointing: bool = True,
    reference: str = "copy",
    lora: bool = False,
    constrain_logprobs: bool = True,
    entropy: bool = True,
    logprob_chunk: int = 512,
    accumulation: int = 2,
    fsdp_sync_every_micro_batch: bool = True,
    rollout_seqs: int = 16,
    rollout_len: int | None = None,
    rollout_backend: str = "hf",
    vllm_memory_utilization: float = 0.3,
    vllm_sleep_level: int = 1,
    device_bytes: float = 80e9,
    foreach_optimizer: bool = True,
    name: str | None = None,
) -> MemoryPlan:
    """The per-device memory plan (formula in the module docstring). ``strategy``: ``fsdp``, ``ddp`` or
    ``single`` (one process, no gradient buckets). ``scored_len``: scored (completion) tokens per sequence
    (None: ``seq_len``); ``accumulation``: micro-batches per optimizer update (Hi-GRPO has at least 2: step 1
    and step 2); ``fsdp_sync_every_micro_batch``: what the trainer does (False: the previous behaviour,
    unsharded fp32 gradients held between micro-batches); ``rollout_backend`` ``vllm``: the engine takes
    ``vllm_memory_utilization * device_bytes`` while it samples (always, with ``vllm_sleep_level`` 0)."""
    if strategy not in ("fsdp", "ddp", "single"):
        raise ValueError(f"strategy must be fsdp, ddp or single, got {strategy!r}")
    mixed = precision in ("bf16-mixed", "16-mixed")
    m = 2 if precision in ("bf16-true", "16-true") else 4
    a = 2 if (mixed or m == 2) else 4
    W = world_size if strategy == "fsdp" else 1
    r = a if (strategy == "fsdp" or not mixed) else 4
    P = counts.total
    T = counts.lora_trainable if lora else counts.trainable
    H, V, N, b, L = counts.hidden, counts.vocab, counts.num_layers, micro_batch_size, seq_len
    n_scored = b * (seq_len if scored_len is None else scored_len)
    g = 4.0 if m == 4 else 2.0  # bytes per gradient element (the master dtype)
    grads = g * T / W
    ref_bytes = (2 if precision.startswith("bf16") else m) if strategy == "fsdp" else m
    vllm_share = vllm_memory_utilization * device_bytes if rollout_backend == "vllm" else 0.0
    persistent = {
        "params": m * P / W,
        "optimizer": 8.0 * T / W * (1 if m == 4 else 0.5),
        "reference": (ref_bytes * P / W) if reference == "copy" else 0.0,
    }
    if strategy == "ddp":
        persistent["grad_buckets"] = 4.0 * T * (1 if m == 4 else 0.5)
    if vllm_share and vllm_sleep_level == 0:
        persistent["vllm_engine"] = vllm_share
    s_full = layer_activation_bytes(counts, a, r, L, counts.lora_r if lora else 0)
    tokens = float(b) * L
    head_dim = H // counts.num_heads
    # final norm, embeddings, RoPE cos/sin, the bool causal/padding mask
    outside = tokens * (4 * H + 2 * r * H + a * H + 2 * r * head_dim) + float(b) * L * L
    if activation_checkpointing:
        saved = tokens * N * r * H + outside
    else:
        saved = tokens * N * s_full + outside
    lg = logprob_bytes(n_scored, logprob_chunk, V, H, a, constrain_logprobs, entropy)
    # unsharded / cast weights alive during the forward and backward
    pa = a if (strategy == "fsdp" and mixed) else m  # bytes of an all-gathered parameter
    if strategy == "fsdp":
        unsharded = pa * (counts.root + 2.0 * counts.layer)
        layer_grad = (pa + 4.0) * counts.layer  # the unsharded gradient + its fp32 reduce-scatter input
        root_grad = (pa + 4.0) * counts.root_trainable
        head_grad = pa * counts.head_trainable  # from the log-prob backward to the root's reduce-scatter
    else:
        unsharded = 0.0
        if mixed:
            unsharded = 2.0 * counts.lm_head + (0.0 if activation_checkpointing else 2.0 * counts.layer_linear)
        layer_grad = (2.0 * counts.layer / 4) if mixed else 0.0  # one bf16 weight gradient before its fp32 add
        root_grad = head_grad = 0.0
    # gradients are freed at the start of each update (zero_grad(set_to_none=True)) and rebuilt by the first
    # micro-batch's backward; from the second micro-batch on (Hi-GRPO always has two) they are alive in the
    # forward too. FSDP reduce-scatters after every micro-batch (sharded accumulation); the previous code
    # skipped it, and FSDP2 then holds unsharded fp32 gradients (4 T) between micro-batches.
    train_grads = {"grads": grads}
    if strategy == "fsdp" and not fsdp_sync_every_micro_batch and accumulation > 1:
        train_grads = {"grads": 4.0 * T}
    recompute = tokens * s_full if activation_checkpointing else 0.0
    bwd_transient = tokens * (3 * a * counts.intermediate + 4 * a * H)  # activation gradients of one layer
    phases = {
        "train_forward_end": {"unsharded": unsharded, "activations": saved, "logprobs": lg["forward"], **train_grads},
        "train_backward_logprobs": {"unsharded": unsharded, "activations": saved,
                                    "logprobs": lg["backward"] + a * tokens * H,
                                    "head_grad": head_grad, **train_grads},
        "train_backward_layers": {"unsharded": unsharded, "activations": saved + recompute + bwd_transient,
                                  "logprobs": a * tokens * H,  # the final hidden states' gradient
                                  "layer_grads": layer_grad, "head_grad": head_grad, **train_grads},
        "train_backward_end": {"unsharded": unsharded, "root_grads": root_grad, **train_grads},
        "optimizer_step": {"grads": grads, "foreach_temp": 4.0 * T / W if foreach_optimizer else 0.0},
    }
    if strategy == "fsdp":  # each forward's root unshard: the all-gather's input and output next to the copy-out
        gather = pa * counts.root * (1.0 + 1.0 / W)
        phases["root_all_gather"] = {"unsharded": pa * counts.root, "all_gather_buffers": gather, **train_grads}
    kv_bytes = 2 if strategy == "fsdp" and mixed else m
    n_roll = rollout_len if rollout_len is not None else L
    if rollout_backend == "vllm":  # the engine's weights and KV cache inside its share; the trainer idles
        phases["rollout"] = {"vllm_engine": 0.0 if vllm_sleep_level == 0 else vllm_share, "grads": grads}
    else:
        phases["rollout"] = {
            "unsharded": unsharded if strategy == "fsdp" else 0.0,
            "all_gather_buffers": pa * counts.root * (1.0 + 1.0 / W) if strategy == "fsdp" else 0.0,
            "kv_cache": 2.0 * N * counts.kv_dim * kv_bytes * rollout_seqs * n_roll,
            "grads": grads,
        }
    settings = dict(strategy=strategy, world_size=W, precision=precision, micro_batch_size=b, seq_len=L,
                    scored_len=n_scored // max(1, b), activation_checkpointing=activation_checkpointing,
                    reference=reference, lora=lora, accumulation=accumulation, logprob_chunk=logprob_chunk,
                    fsdp_sync_every_micro_batch=fsdp_sync_every_micro_batch, rollout_backend=rollout_backend)
    return MemoryPlan(name or strategy, persistent, phases, settings)


def step_lengths(prompt_tokens: int, max_reasoning_tokens: int, tokens_per_object: int) -> tuple[int, int]:
    """Longest training sequences of step 1 and step 2 (step 2's context holds step 1's plan)."""
    s1 = prompt_tokens + max_reasoning_tokens + 1 + tokens_per_object + 1
    return s1, s1 + max_reasoning_tokens


def plan_for_config(cfg: Any, counts: ModelCounts | None = None, prompt_tokens: int = 100,
                    strategy: str | None = None, lora: bool | None = None, device_bytes: float = 80e9,
                    **overrides: Any) -> MemoryPlan:
    """The plan of a :class:`rewardkit.rl.trainer.HiGRPOConfig` for ShapeLLM-Omni (Qwen2.5-VL-7B with the
    mesh vocabulary) unless ``counts`` is given; ``prompt_tokens``: the templated prompt's length;
    ``device_bytes``: one GPU's memory (the vLLM engine takes ``rollout.gpu_memory_utilization`` of it);
    ``overrides``: :func:`plan_memory` arguments (e.g. ``fsdp_sync_every_micro_batch=False``)."""
    if counts is None:
        counts = count_model(build_meta_model(shapellm_omni_config()), cfg.freeze,
                             lora_r=(cfg.lora.r if cfg.lora is not None else 16))
    strategy = strategy or ("fsdp" if cfg.strategy == "fsdp" else "ddp")
    lora = (cfg.lora is not None) if lora is None else lora
    world = int(cfg.devices) * int(cfg.num_nodes) if str(cfg.devices).isdigit() else 1
    precision = cfg.precision if cfg.precision != "auto" else "bf16-mixed"  # ShapeLLM-Omni ships bf16 weights
    reference = cfg.reference if cfg.reference != "auto" else ("adapter" if lora else "copy")
    if cfg.beta == 0:
        reference = "none"
    _, L2 = step_lengths(prompt_tokens, cfg.sampling.max_reasoning_tokens, cfg.tokens_per_object)
    scored = L2 - prompt_tokens - cfg.sampling.max_reasoning_tokens  # step 2's completion (its plan is context)
    n_seqs = cfg.prompts_per_step * cfg.group_size
    ro = cfg.rollout
    kw = dict(
        strategy=strategy, world_size=world, precision=precision, micro_batch_size=cfg.micro_batch_size,
        seq_len=L2, scored_len=scored, activation_checkpointing=cfg.activation_checkpointing, reference=reference,
        lora=lora, constrain_logprobs=cfg.sampling.constrain_logprobs, rollout_seqs=n_seqs,
        logprob_chunk=cfg.logprob_chunk_tokens, accumulation=2 * math.ceil(n_seqs / max(1, cfg.micro_batch_size)),
        rollout_backend=ro.backend, vllm_memory_utilization=ro.gpu_memory_utilization,
        vllm_sleep_level=ro.sleep_level, device_bytes=device_bytes,
    )
    kw.update(overrides)
    return plan_memory(counts, **kw)


def saved_bytes_per_layer(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Bytes autograd saves inside each decoder layer of one forward (storages counted once, weights and
    the shared attention mask left out: the mean over layers 2..N), measured with ``saved_tensors_hooks``:
    the check of :func:`layer_activation_bytes`."""

    seen: set[int] = set()
    total = [0]

    def pack(t):
        try:
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in seen and not (t.dim() == 2 and tuple(t.shape) in shapes and t.dtype != torch.float32):
                seen.add(key)
                total[0] += st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for n, m in model.named_modules() if type(m).__name__ in names and "visual" not in n.split(".")]
    if len(layers) < 2:
        raise ValueError("needs at least two decoder layers (the first one also sees the shared attention mask)")
    seen.update(p.untyped_storage().data_ptr() for p in model.parameters())  # weights are not activations
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}  # nor their autocast copies
    shapes |= {s[::-1] for s in shapes}
    marks = []
    hooks = [layers[1].register_forward_pre_hook(lambda m, a: marks.append(total[0])),
             layers[-1].register_forward_hook(lambda m, a, o: marks.append(total[0]))]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    for h in hooks:
        h.remove()
    return (marks[1] - marks[0]) / (len(layers) - 1)
