"""The optional vLLM rollout backend (``rollout.backend: vllm``): both Hi-GRPO phases sampled by a vLLM
engine colocated with the trainer on each GPU, its weights refreshed from the policy after every optimizer
update. Hugging Face ``generate`` (``backend: hf``) stays the default and the CPU path.

The design follows the two colocated RL trainers that use vLLM:

- TRL (``GRPOTrainer(use_vllm=True, vllm_mode="colocate")``, trl/generation/vllm_generation.py): one
  ``vllm.LLM`` per training process with ``distributed_executor_backend="external_launcher"``, weights
  pushed tensor by tensor into ``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights``
  (FSDP2 parameters gathered with ``DTensor.full_tensor()``, LoRA merged first), then
  ``llm.reset_prefix_cache()``; ``sleep`` / ``wake_up`` free the engine's GPU memory during the update.
- verl (verl/workers/fsdp_workers.py ``rollout_mode``): ``resume(tags=["weights"])``, a generator of
  ``(name, param.full_tensor())`` streamed into the engine, then ``resume(tags=["kv_cache"])``.

The calls target **vLLM 0.33.0** (the release on PyPI when this was written; its wheel pins torch 2.14.0 and
transformers < 5.21, so it is not installed in rewardkit's development environment): ``vllm.LLM(...,
distributed_executor_backend="external_launcher", enable_sleep_mode=...)``, ``LLM.generate(prompts=[{
"prompt_token_ids": ...}], sampling_params=[SamplingParams, ...], use_tqdm=False)``, ``LLM.sleep(level)``,
``LLM.wake_up(tags)``, ``LLM.reset_prefix_cache()``, the V1 engine's in-process ``model_executor`` (present
because external_launcher turns V1 multiprocessing off) and ``SamplingParams`` fields ``temperature, top_p,
top_k, min_p, seed, stop_token_ids, ignore_eos, max_tokens, min_tokens, allowed_token_ids, logprobs,
detokenize``.

What this module keeps from the trainer's own sampler, so both backends sample the same distribution:

- phase 1 (reasoning): temperature ``reasoning_temperature`` (or ``temperature``), every token but the mesh
  codes, ``<mesh-end>``, pad and unk allowed (``MeshVocab.allowed_masks``), stops at ``<mesh-start>`` or the
  tokenizer's EOS only (``ignore_eos`` + explicit ``stop_token_ids``: the checkpoint's generation_config EOS
  list does not add stops, as with the HF path), at most ``max_reasoning_tokens``;
- phase 2 (mesh): temperature ``temperature``, ``allowed_token_ids`` = the policy's ``<meshN>`` ids; with
  ``force_mesh_length`` exactly ``tokens_per_object`` codes (``min_tokens = max_tokens``) and the forced
  ``<mesh-end>`` appended (marked PHASE_FORCED by the policy, as the HF processor forces it), else codes
  and ``<mesh-end>`` allowed, stopping at ``<mesh-end>``, at most ``tokens_per_object + 1`` tokens;
- the phase-2 prompt is the phase-1 prompt plus the generated reasoning (``mesh_phase_prompt``, shared);
- log-probs: none are requested from vLLM. The trainer recomputes every log-prob (old, current, reference)
  with the policy itself; sampler log-probs (bf16 engine, other kernels) never enter the ratio or the KL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import nn

from rewardkit.rl.policy import PHASE_MESH, PHASE_TEXT, MeshVocab, SamplingConfig

__all__ = ["RolloutConfig", "VLLM_VERSION", "check_rollout_backend", "sampling_params_kwargs", "request_seeds",
           "vllm_prompts", "finish_completion", "policy_weights", "changing_weight_names", "VLLMGenerator"]

VLLM_VERSION = "0.33.0"  # the vLLM release whose API this module calls

_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


@dataclass
class RolloutConfig:
    """Which sampler generates the rollouts (``rollout:`` in the config)."""

    # hf: Hugging Face generate on the training model (every device, CPU included; the tested default);
    # vllm: a vLLM engine colocated on each GPU (Llama / Qwen2 / Qwen2.5-VL policies; needs
    # `pip install vllm` and CUDA), weights synced from the policy after every optimizer update
    backend: Literal["hf", "vllm"] = "hf"
    # vllm: the share of each GPU's memory vLLM may take (weights + KV cache); the trainer has the rest
    gpu_memory_utilization: float = 0.3
    # vllm: the engine's context length (prompt + both phases must fit); None: the checkpoint's
    # max_position_embeddings (vLLM's default)
    max_model_len: int | None = None
    # vllm: weight/KV dtype of the engine (the trainer keeps its own master weights)
    dtype: str = "bfloat16"
    # vllm: 0 keeps the engine resident; 1 offloads its weights to host memory and drops the KV cache while
    # the policy trains (wake_up before the next rollout); 2 discards its weights too (every weight is
    # re-sent at the next sync, not only the trained ones)
    sleep_level: int = 1
    enforce_eager: bool = False  # vllm: no CUDA graphs / torch.compile (faster start, slower decode)
    max_num_seqs: int = 256  # vllm: sequences decoded together


def check_rollout_backend(cfg: RolloutConfig, accelerator: str = "auto", *, vllm_installed: bool | None = None,
                          cuda: bool | None = None) -> None:
    """A one-line :class:`rewardkit.config.ConfigError` when ``backend: vllm`` cannot run here (vllm not
    installed, no CUDA GPU, a CPU accelerator, a bad setting); nothing for ``hf``. ``vllm_installed`` /
    ``cuda`` default to what this machine has."""
    from rewardkit.config import ConfigError

    if cfg.backend == "hf":
        return
    if cfg.backend != "vllm":
        raise ConfigError(f"rollout.backend must be hf or vllm, got {cfg.backend!r}")
    if vllm_installed is None:
        import importlib.util

        vllm_installed = importlib.util.find_spec("vllm") is not None
    if cuda is None:
        cuda = torch.cuda.is_available()
    missing = []
    if not vllm_installed:
        missing.append(f"the vllm package (not installed; pip install 'rewardkit[vllm]', API of vLLM {VLLM_VERSION})")
    if not cuda or accelerator == "cpu":
        missing.append("a CUDA GPU (" + ("accelerator is cpu" if accelerator == "cpu" else "none visible") + ")")
    if missing:
        raise ConfigError("rollout.backend vllm needs " + " and ".join(missing) + "; use rollout.backend hf")
    if not 0.0 < cfg.gpu_memory_utilization < 1.0:
        raise ConfigError(f"rollout.gpu_memory_utilization must be in (0, 1), got {cfg.gpu_memory_utilization}")
    if cfg.sleep_level not in (0, 1, 2):
        raise ConfigError(f"rollout.sleep_level must be 0, 1 or 2, got {cfg.sleep_level}")


# -- what vLLM is asked to sample (pure: tested on CPU) ---------------------------------------------

def sampling_params_kwargs(vocab: MeshVocab, phase: int, sampling: SamplingConfig, max_new: int,
                           tokens_per_object: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one phase, the same distribution and stopping rule
    as the Hugging Face path (``MeshPolicy._generate`` with its ``_Restrict`` processor). No seed (see
    :func:`request_seeds`) and no log-probs (the trainer recomputes them)."""
    text_ok, mesh_ok = vocab.allowed_masks()
    kw: dict[str, Any] = dict(
        n=1, top_p=float(sampling.top_p), top_k=max(0, int(sampling.top_k)), min_p=0.0, repetition_penalty=1.0,
        presence_penalty=0.0, frequency_penalty=0.0, ignore_eos=True, logprobs=None, detokenize=False,
        skip_special_tokens=False,
    )
    if phase == PHASE_TEXT:
        t = sampling.temperature if sampling.reasoning_temperature is None else sampling.reasoning_temperature
        kw.update(temperature=float(t), allowed_token_ids=torch.nonzero(text_ok).flatten().tolist(),
                  stop_token_ids=[vocab.mesh_start] + list(vocab.eos_ids), max_tokens=int(max_new), min_tokens=0)
    elif phase == PHASE_MESH:
        kw["temperature"] = float(sampling.temperature)
        if sampling.force_mesh_length:  # exactly n codes; <mesh-end> is appended (forced) afterwards
            kw.update(allowed_token_ids=vocab.code_ids.tolist(), stop_token_ids=[], max_tokens=int(tokens_per_object),
                      min_tokens=int(tokens_per_object))
        else:
            kw.update(allowed_token_ids=torch.nonzero(mesh_ok).flatten().tolist(), stop_token_ids=[vocab.mesh_end],
                      max_tokens=int(max_new), min_tokens=0)
    else:
        raise ValueError(f"phase must be PHASE_TEXT or PHASE_MESH, got {phase}")
    return kw


def request_seeds(seed: int | None, n: int) -> list[int | None]:
    """One vLLM request seed per context (per-request seeds make a batch's samples independent of how the
    engine schedules it); None without a seed."""
    if seed is None:
        return [None] * n
    import numpy as np

    return [int(s) for s in np.random.SeedSequence([int(seed) % 2**63, n]).generate_state(n, dtype=np.uint32)]


def vllm_prompts(contexts: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """vLLM ``TokensPrompt`` dicts: the token ids are given, vLLM tokenizes nothing."""
    return [{"prompt_token_ids": [int(t) for t in c]} for c in contexts]


def finish_completion(token_ids: Sequence[int], phase: int, vocab: MeshVocab, sampling: SamplingConfig) -> list[int]:
    """A vLLM completion as the HF path returns it: cut after the first stop token, and under
    ``force_mesh_length`` the forced ``<mesh-end>`` appended after the codes."""
    stops = {vocab.mesh_start, *vocab.eos_ids} if phase == PHASE_TEXT else {vocab.mesh_end}
    out = []
    for t in token_ids:
        out.append(int(t))
        if t in stops:
            break
    if phase == PHASE_MESH and sampling.force_mesh_length and (not out or out[-1] != vocab.mesh_end):
        out.append(vocab.mesh_end)
    return out


# -- the weights vLLM receives (pure torch: tested on CPU, FSDP included) --------------------------

def _clean(name: str) -> str:
    for p in _WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{base-model module name: peft LoraLayer}`` of a PEFT model (empty for a plain model)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is optional
        return {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {_clean(n): m for n, m in base.named_modules() if isinstance(m, LoraLayer)}


def changing_weight_names(model: nn.Module) -> set[str]:
    """The Hugging Face names of the weights that training can change: the trainable parameters, or with
    LoRA the merged weights (and biases) of the adapted layers. The rest (a frozen vision tower, a frozen
    ``lm_head``) need no sync once the engine holds them."""
    model = getattr(model, "module", model)
    lora = _lora_layers(model)
    if lora:
        return {f"{n}.{w}" for n, m in lora.items() for w in ("weight", "bias")
                if getattr(m.get_base_layer(), w, None) is not None}
    return {_clean(n) for n, p in model.named_parameters() if p.requires_grad}


def policy_weights(model: nn.Module, dtype: torch.dtype | None = None, names: set[str] | None = None,
                   device: torch.device | str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` pairs of the policy under the names of its Hugging Face checkpoint (what vLLM's
    ``load_weights`` maps to its own layers), one tensor at a time so the caller can stream them.

    - wrappers (Fabric, activation checkpointing, ``torch.compile``) are looked through;
    - LoRA (PEFT): each adapted weight is ``W + scaling * B @ A`` computed beside the model (peft's
      ``get_delta_weight``); the training model is not merged, so not touched at all;
    - FSDP2: each sharded parameter is cast (``dtype``) and then gathered with ``DTensor.full_tensor()`` -- a
      collective: every rank must iterate the same names in the same order (they do: state_dict order);
    - ``names``: only these (see :func:`changing_weight_names`); ``dtype``: cast to it (the engine's);
      ``device``: move there (the engine's GPU).
    """
    model = getattr(model, "module", model)
    lora = _lora_layers(model)
    base = model.get_base_model() if lora else model
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        DTensor = ()  # type: ignore[assignment]
    for raw, t in base.state_dict().items():
        name = _clean(raw)
        if ".lora_" in name:
            continue
        owner = None
        if ".base_layer." in name:
            owner = name.split(".base_layer.")[0]
            name = name.replace(".base_layer.", ".")
        if names is not None and name not in names:
            continue
        t = t.detach()
        if owner is not None and name.endswith(".weight") and owner in lora:  # merged in the master dtype
            layer = lora[owner]
            for a in layer.active_adapters:
                if a in layer.lora_A:
                    t = t + layer.get_delta_weight(a).to(t)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)  # before gathering: half the traffic of an fp32 master weight
        if isinstance(t, DTensor):
            t = t.full_tensor()
        if device is not None:
            t = t.to(device)
        yield name, t


# -- the engine (GPU only; not run in rewardkit's test suite) --------------------------------------

class VLLMGenerator:
    """Samples both Hi-GRPO phases with a colocated ``vllm.LLM`` (one per training process, TP = 1) and keeps
    its weights equal to the policy's: after every optimizer step (a torch ``register_step_post_hook`` marks
    them stale) the next ``generate`` streams :func:`policy_weights` into the engine. Install it as
    ``MeshPolicy.generator``; :meth:`release` puts the engine to sleep before the update.

    GPU only and not exercised by the CPU test suite (see docs/hi-grpo.md, "vLLM rollouts").
    """

    def __init__(self, cfg: RolloutConfig, policy: Any, model: nn.Module, optimizer: Any, model_path: str,
                 rank: int = 0, local_rank: int = 0, world_size: int = 1, max_model_len: int | None = None):
        from vllm import LLM  # lazy: vllm is optional

        self.cfg, self.policy, self.model = cfg, policy, model
        self.dtype = getattr(torch, cfg.dtype)
        # vLLM's external launcher reads the torch.distributed environment (as TRL sets it)
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        self.llm = LLM(
            model=str(model_path), tokenizer=str(model_path), dtype=cfg.dtype, tensor_parallel_size=1,
            gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=max_model_len or cfg.max_model_len,
            max_num_seqs=cfg.max_num_seqs, enable_sleep_mode=cfg.sleep_level > 0, enforce_eager=cfg.enforce_eager,
            distributed_executor_backend="external_launcher", seed=rank,
            generation_config="vllm",  # no sampling defaults from the checkpoint; every knob is set per request
        )
        self._stale = True  # the checkpoint on disk may predate the policy (a resumed run): sync first
        self._full_sync = True
        self._asleep = False
        self._names = changing_weight_names(model)
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Fabric's wrapper
        optimizer.register_step_post_hook(lambda *_: self._mark_stale())

    def _mark_stale(self) -> None:
        self._stale = True

    @property
    def _engine_model(self) -> nn.Module:
        # vLLM 0.33 V1 engine, in-process under external_launcher (TRL's colocate path)
        return self.llm.llm_engine.model_executor.driver_worker.model_runner.model

    def sync(self) -> None:
        """Stream the policy's (changed) weights into the engine; a collective under FSDP."""
        if self._asleep:
            self.llm.wake_up(tags=["weights"])
        names = None if self._full_sync or self.cfg.sleep_level == 2 else self._names
        device = torch.device("cuda", torch.cuda.current_device())
        with torch.no_grad():
            for name, t in policy_weights(self.model, self.dtype, names, device):
                self._engine_model.load_weights([(name, t)])
                del t
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        torch.cuda.empty_cache()
        self._stale, self._full_sync = False, False

    def _ready(self) -> None:
        if self._stale:
            self.sync()
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False

    def generate(self, contexts: list[list[int]], phase: int, max_new: int, sampling: SamplingConfig,
                 seed: int | None) -> list[list[int]]:
        from vllm import SamplingParams

        self._ready()
        kw = sampling_params_kwargs(self.policy.vocab, phase, sampling, max_new, self.policy.tokens_per_object)
        params = [SamplingParams(**kw, seed=s) for s in request_seeds(seed, len(contexts))]
        outs = self.llm.generate(vllm_prompts(contexts), sampling_params=params, use_tqdm=False)
        return [finish_completion(o.outputs[0].token_ids, phase, self.policy.vocab, sampling) for o in outs]

    def release(self) -> None:
        """Free the engine's GPU memory for the update (``sleep_level`` 1: weights to host, KV dropped)."""
        if self.cfg.sleep_level > 0 and not self._asleep:
            self.llm.sleep(level=self.cfg.sleep_level)
            self._asleep = True
            if self.cfg.sleep_level == 2:  # weights discarded (vLLM 0.33 keeps the buffers): send them all
                self._full_sync = self._stale = True
