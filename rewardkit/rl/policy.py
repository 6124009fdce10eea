"""Policy adapter: Hugging Face causal LMs whose vocabulary holds mesh tokens (ShapeLLM-Omni convention).

The convention (ShapeLLM-Omni / AR3D-R1): an object is ``<mesh-start><mesh{i0}>...<mesh{iM-1}><mesh-end>``
with one vocabulary token per code ``<meshN>`` (N < codebook size; M = 1024 for ShapeLLM-Omni's VQVAE,
fewer for the tiny test tokenizers). One Hi-GRPO step is generated in two phases:

1. reasoning: free text sampled from the context until the model emits ``<mesh-start>`` or EOS
   (EOS is replaced by a forced ``<mesh-start>``, as the released AR3D-R1 code appends it literally);
2. mesh: exactly ``tokens_per_object`` codes then ``<mesh-end>`` (constrained sampling, so a sample
   always decodes; ``force_mesh_length: false`` lets the model end early and pads with the last code,
   which is ShapeLLM-Omni's parse rule).

The policy's actions are the reasoning tokens, a sampled ``<mesh-start>``, the codes and a sampled
``<mesh-end>``; forced tokens, tokens after the end and padding are masked out of the loss.
:func:`sequence_logprobs` gives the log-probabilities of those actions under any model with the same
vocabulary (current, old or frozen reference policy).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from rewardkit.rl.tokenizers.base import fit_codes

__all__ = [
    "SamplingConfig",
    "MeshVocab",
    "MeshPolicy",
    "StepRollout",
    "RolloutBatch",
    "sequence_logprobs",
    "forward_logits",
    "output_layer",
    "LOGPROB_CHUNK_TOKENS",
    "mesh_phase_prompt",
    "build_tiny_policy",
    "PHASE_NONE", "PHASE_TEXT", "PHASE_MESH", "PHASE_FORCED",
]

MESH_START, MESH_END = "<mesh-start>", "<mesh-end>"
_MESH_RE = re.compile(r"^<mesh(\d+)>$")

# phase ids of completion positions, used to constrain log-probs the way sampling was constrained
PHASE_NONE, PHASE_TEXT, PHASE_MESH, PHASE_FORCED = 0, 1, 2, 3


@dataclass
class SamplingConfig:
    """Sampling settings of the two phases (ShapeLLM-Omni's defaults: temperature 0.7, top_p 0.7)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    reasoning_temperature: float | None = None  # None: same as ``temperature``
    max_reasoning_tokens: int = 2048  # AR3D-R1's release (max_completion_length); 0: direct mesh generation
    force_mesh_length: bool = True
    constrain_logprobs: bool = True  # score actions under the same token constraints sampling used


@dataclass
class MeshVocab:
    """Token ids of the mesh convention in one tokenizer's vocabulary."""

    mesh_start: int
    mesh_end: int
    code_ids: torch.Tensor  # [codebook] code -> token id
    eos_ids: list[int]
    pad_id: int
    vocab_size: int
    unk_id: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, codebook_size: int | None = None, vocab_size: int | None = None) -> "MeshVocab":
        vocab = tokenizer.get_vocab()
        codes = {int(m.group(1)): i for t, i in vocab.items() if (m := _MESH_RE.match(t))}
        if MESH_START not in vocab or MESH_END not in vocab or not codes:
            raise ValueError(f"tokenizer lacks the mesh tokens ({MESH_START}, {MESH_END}, <meshN>)")
        n = codebook_size or (max(codes) + 1)
        missing = [c for c in range(n) if c not in codes]
        if missing:
            raise ValueError(f"tokenizer lacks {len(missing)} mesh code tokens, e.g. <mesh{missing[0]}>")
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return cls(
            mesh_start=vocab[MESH_START],
            mesh_end=vocab[MESH_END],
            code_ids=torch.tensor([codes[c] for c in range(n)], dtype=torch.long),
            eos_ids=[eos] if eos is not None else [],
            pad_id=pad if pad is not None else 0,
            vocab_size=max(vocab_size or 0, len(tokenizer), max(vocab.values()) + 1),
            unk_id=tokenizer.unk_token_id,
        )

    @property
    def codebook_size(self) -> int:
        return int(self.code_ids.numel())

    def allowed_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``[vocab]`` masks of the tokens allowed in the text phase and in the mesh phase."""
        text = torch.ones(self.vocab_size, dtype=torch.bool)
        text[self.code_ids] = False
        text[self.mesh_end] = False
        if self.pad_id not in self.eos_ids:
            text[self.pad_id] = False
        if self.unk_id is not None and self.unk_id not in self.eos_ids:
            text[self.unk_id] = False
        mesh = torch.zeros(self.vocab_size, dtype=torch.bool)
        mesh[self.code_ids] = True
        mesh[self.mesh_end] = True
        return text, mesh

    def token_to_code(self) -> torch.Tensor:
        lut = torch.full((self.vocab_size,), -1, dtype=torch.long)
        lut[self.code_ids] = torch.arange(self.codebook_size)
        return lut


@dataclass
class StepRollout:
    """One step (reasoning + mesh) of one sample."""

    context_ids: list[int]
    completion_ids: list[int]
    phases: list[int]  # per completion token: PHASE_TEXT / PHASE_MESH / PHASE_FORCED
    reasoning_text: str
    codes: np.ndarray  # [tokens_per_object] after ShapeLLM-Omni's pad/truncate rule
    num_codes_emitted: int

    @property
    def action_mask(self) -> list[int]:
        return [1 if p in (PHASE_TEXT, PHASE_MESH) else 0 for p in self.phases]


@dataclass
class RolloutBatch:
    """Padded tensors of a list of :class:`StepRollout` for log-prob computation.

    ``input_ids``/``attention_mask`` are ``[B, L]`` (right-padded context + completion); ``mask`` and
    ``phases`` are ``[B, L-1]`` aligned with the predicted token ``input_ids[:, 1:]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    phases: torch.Tensor

    @classmethod
    def collate(cls, steps: Sequence[StepRollout], pad_id: int) -> "RolloutBatch":
        L = max(len(s.context_ids) + len(s.completion_ids) for s in steps)
        ids = torch.full((len(steps), L), pad_id, dtype=torch.long)
        att = torch.zeros((len(steps), L), dtype=torch.long)
        mask = torch.zeros((len(steps), L), dtype=torch.float32)
        phases = torch.zeros((len(steps), L), dtype=torch.long)
        for i, s in enumerate(steps):
            seq = s.context_ids + s.completion_ids
            c = len(s.context_ids)
            ids[i, : len(seq)] = torch.tensor(seq)
            att[i, : len(seq)] = 1
            mask[i, c : len(seq)] = torch.tensor(s.action_mask, dtype=torch.float32)
            phases[i, c : len(seq)] = torch.tensor(s.phases)
        return cls(ids, att, mask[:, 1:], phases[:, 1:])

    def to(self, device: torch.device | str) -> "RolloutBatch":
        return RolloutBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.mask, self.phases)))


def forward_logits(model: nn.Module, **inputs: Any) -> Any:
    """``model(**inputs)``, keeping the logits in the dtype the model computed them in.

    A module set up by Lightning Fabric under a mixed precision (``bf16-mixed``, ``16-mixed``; DDP, FSDP or one
    device) casts every floating-point output back to float32 after its forward (the precision plugin's
    ``convert_output``): for a causal LM that is a second, float32 copy of the whole ``[B, L, V]`` logits,
    kept for the backward in place of the bf16 ones (about 2 bytes x B x L x V more at the end of the
    forward, 6 while both exist; 3.3 GB per micro-batch sequence for ShapeLLM-Omni at L = 5222).
    :func:`sequence_logprobs` casts one row at a time instead, so this runs the wrapped module (DDP / FSDP
    included) inside the plugin's forward context (autocast) without that cast; anything else is called as is.
    """
    inner, strategy = getattr(model, "_forward_module", None), getattr(model, "_strategy", None)
    precision = getattr(strategy, "precision", None)
    if inner is None or precision is None or not callable(getattr(precision, "forward_context", None)):
        return model(**inputs)
    inputs = precision.convert_input(inputs)  # floating inputs to the compute dtype (ids are left as they are)
    with precision.forward_context():
        return inner(**inputs)


LOGPROB_CHUNK_TOKENS = 512  # scored tokens per output-layer chunk (HiGRPOConfig.logprob_chunk_tokens)


def output_layer(model: nn.Module) -> nn.Linear:
    """The vocabulary projection (``lm_head``) of a Hugging Face causal LM, through Fabric / DDP / PEFT
    wrappers."""
    m: Any = model
    for _ in range(8):
        get = getattr(m, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if isinstance(head, nn.Linear):
            return head
        m = getattr(m, "module", None) or getattr(m, "_forward_module", None)
        if m is None:
            break
    raise ValueError(f"{type(model).__name__} has no nn.Linear output layer (get_output_embeddings)")


def _chunk_logprobs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                    temps: torch.Tensor, phases: torch.Tensor, text_ok: torch.Tensor | None, mesh_ok: torch.Tensor | None,
                    entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` (and the entropy, no gradient) at ``n`` positions from their hidden states
    ``h`` [n, H]: the [n, V] logits (and the [n, V] mask of the tokens sampling could not choose, from the
    ``[V]`` phase masks) exist only inside this call."""
    lg = nn.functional.linear(h, weight, bias).float() / temps[:, None]
    if text_ok is not None and mesh_ok is not None:
        V = lg.shape[1]
        ok_t, ok_m = (torch.nn.functional.pad(m[:V], (0, max(0, V - m.numel()))) for m in (text_ok, mesh_ok))
        p = phases[:, None]  # ids past the tokenizer's vocabulary are never sampled under a constraint
        blocked = ((p == PHASE_TEXT) & ~ok_t[None]) | ((p == PHASE_MESH) & ~ok_m[None])
        lg = lg.masked_fill(blocked, torch.finfo(lg.dtype).min)
    lse = torch.logsumexp(lg, dim=-1)
    lp = lg.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not entropy:
        return lp, lp.new_zeros(0)
    with torch.no_grad():
        ent = lse - (torch.softmax(lg, dim=-1) * lg).sum(-1)
    return lp, ent


def sequence_logprobs(
    model: nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    allowed: tuple[torch.Tensor, torch.Tensor] | None = None,
    reasoning_temperature: float | None = None,
    return_entropy: bool = False,
    chunk_tokens: int = LOGPROB_CHUNK_TOKENS,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``[B, L-1]`` log-probabilities of ``input_ids[:, 1:]`` under ``model`` (0 where masked).

    Logits are divided by the temperature each position was sampled with (as TRL does): text-phase
    positions by ``reasoning_temperature`` (``None``: ``temperature``), all others by ``temperature``.
    With ``allowed`` (the text-phase and mesh-phase masks of :meth:`MeshVocab.allowed_masks`), each
    position is normalized over the tokens sampling could choose there, so the ratio and KL refer to the
    distribution that was sampled. ``return_entropy`` also returns the ``[B, L-1]`` entropy of that
    distribution at each position (no gradient; 0 where masked).

    Selective and chunked (as TRL's ``selective_log_softmax`` and verl's fused log-probs avoid a full
    log-softmax): the output layer is applied only to the hidden states of the scored positions
    (``mask > 0``), ``chunk_tokens`` of them at a time, each chunk under activation checkpointing, so no
    ``[B, L, V]`` tensor (and no fp32 ``[B, L, V]`` one) is ever allocated: the largest vocabulary-wide
    tensors are ``[chunk_tokens, V]``, in the forward and again when the backward recomputes a chunk. A
    forward pre-hook on the output layer does this inside the model's own forward (so FSDP's root
    all-gather of the output layer is in place) and hands the layer an empty slice.
    """
    head = output_layer(model)
    targets = batch.input_ids[:, 1:]
    sel = batch.mask > 0
    text_ok = mesh_ok = None
    if allowed is not None:  # once, not per chunk
        text_ok, mesh_ok = (a.to(targets.device) for a in allowed)
    ph = batch.phases[sel]
    tgt = targets[sel]
    if reasoning_temperature is not None and reasoning_temperature != temperature:
        temps = torch.where(ph == PHASE_TEXT, reasoning_temperature, temperature).float()
    else:
        temps = torch.full(ph.shape, float(temperature), device=ph.device)
    result: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod: nn.Module, args: tuple) -> tuple:
        h = args[0][:, :-1][sel]  # [n, H]: the scored positions only
        lps, ents = [], []
        grad = torch.is_grad_enabled() and (h.requires_grad or mod.weight.requires_grad)
        for s0 in range(0, h.shape[0], max(1, int(chunk_tokens))):
            s1 = min(h.shape[0], s0 + max(1, int(chunk_tokens)))
            chunk = (h[s0:s1], mod.weight, mod.bias, tgt[s0:s1], temps[s0:s1], ph[s0:s1], text_ok, mesh_ok,
                     return_entropy)
            if grad:
                from torch.utils.checkpoint import checkpoint

                lp, ent = checkpoint(_chunk_logprobs, *chunk, use_reentrant=False)
            else:
                lp, ent = _chunk_logprobs(*chunk)
            lps.append(lp)
            ents.append(ent)
        result["out"] = (torch.cat(lps) if lps else h.new_zeros(0, dtype=torch.float32),
                         torch.cat(ents) if ents else h.new_zeros(0, dtype=torch.float32))
        return (args[0][:, :0],) + tuple(args[1:])  # the layer itself projects nothing

    handle = head.register_forward_pre_hook(hook)
    try:
        # no KV cache: recomputation-safe
        forward_logits(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        handle.remove()
    if "out" not in result:
        raise RuntimeError(f"{type(model).__name__}'s forward never called its output layer")
    lp_sel, ent_sel = result["out"]
    lp = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device).masked_scatter(sel, lp_sel.float())
    lp = lp * batch.mask
    if not return_entropy:
        return lp
    ent = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device).masked_scatter(sel, ent_sel.float())
    return lp, ent * batch.mask


def mesh_phase_prompt(context_ids: Sequence[int], reasoning_ids: Sequence[int],
                      vocab: MeshVocab) -> tuple[list[int], list[int], list[int]]:
    """The mesh phase's prompt after a reasoning phase: ``(prompt, prefix, phases)`` with ``prompt =
    context + prefix``. ``prefix`` is the generated reasoning when it ended with ``<mesh-start>``; after EOS
    or the length limit, the reasoning without EOS plus a forced ``<mesh-start>`` (the released AR3D-R1
    code appends it literally). ``phases`` marks each prefix token (PHASE_TEXT, or PHASE_FORCED)."""
    r = list(reasoning_ids)
    if r and r[-1] == vocab.mesh_start:
        prefix, phases = r, [PHASE_TEXT] * len(r)
    else:  # EOS or length limit: drop EOS, force <mesh-start>
        body = [t for t in r if t not in vocab.eos_ids]
        prefix, phases = body + [vocab.mesh_start], [PHASE_TEXT] * len(body) + [PHASE_FORCED]
    return list(context_ids) + prefix, prefix, phases


class _Restrict:
    """Logits processor: the text phase may not emit codes; the mesh phase emits only codes and
    ``<mesh-end>``, exactly ``n`` codes when ``force_length``. The masks are built once per generate call
    on the logits' device (no host-to-device copy per token)."""

    def __init__(self, vocab: MeshVocab, phase: int, prompt_len: int, n: int, force_length: bool,
                 device: torch.device | str = "cpu"):
        text, mesh = vocab.allowed_masks()
        codes_only = mesh.clone()
        codes_only[vocab.mesh_end] = False
        end_only = torch.zeros_like(mesh)
        end_only[vocab.mesh_end] = True
        self.masks = {k: m.to(device) for k, m in
                      (("free", text if phase == PHASE_TEXT else mesh), ("codes", codes_only), ("end", end_only))}
        self.blocked: dict[str, torch.Tensor] = {}
        self.phase, self.prompt_len, self.n, self.force = phase, prompt_len, n, force_length

    def _blocked(self, key: str, width: int, device: torch.device) -> torch.Tensor:
        b = self.blocked.get(key)
        if b is None or b.numel() != width or b.device != device:
            allowed = self.masks[key].to(device)
            b = torch.ones(width, dtype=torch.bool, device=device)  # logits beyond the vocabulary: blocked
            v = min(width, allowed.numel())
            b[:v] = ~allowed[:v]
            self.blocked[key] = b
        return b

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        key = "free"
        if self.phase == PHASE_MESH and self.force:
            key = "end" if input_ids.shape[1] - self.prompt_len >= self.n else "codes"
        return scores.masked_fill(self._blocked(key, scores.shape[-1], scores.device), float("-inf"))


class MeshPolicy:
    """A causal LM + its tokenizer + the mesh convention, with two-phase sampling.

    ``model`` may be wrapped later (DDP/Fabric); the policy only calls ``generate`` and ``forward``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        tokens_per_object: int = 1024,
        codebook_size: int | None = None,
        use_chat_template: bool | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        mcfg = getattr(model, "config", None)
        cfg_vocab = getattr(mcfg, "vocab_size", None) or getattr(getattr(mcfg, "text_config", None), "vocab_size", None)
        self.vocab = MeshVocab.from_tokenizer(tokenizer, codebook_size, vocab_size=cfg_vocab)
        self.tokens_per_object = int(tokens_per_object)
        if use_chat_template is None:
            use_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = use_chat_template
        self._allowed = self.vocab.allowed_masks()
        # force_mesh_length samples each code with <mesh-end> blocked (it is appended, forced, after the n-th):
        # the mesh phase's scored positions are normalized over the codes alone, as they were sampled
        codes_only = self._allowed[1].clone()
        codes_only[self.vocab.mesh_end] = False
        self._allowed_forced = (self._allowed[0], codes_only)
        self._lut = self.vocab.token_to_code()
        # sharded (FSDP) policies: every rank must run the same number of forwards while generating, so
        # ranks that finished keep stepping until all have (Hugging Face generate's synced_gpus)
        self.synced_generation = False
        # another sampler of the two phases (``generate(contexts, phase, max_new, sampling, seed)``), e.g.
        # :class:`rewardkit.rl.vllm_rollout.VLLMGenerator`; None: Hugging Face ``generate`` on ``model``
        self.generator: Any = None
        # scored tokens per chunk of the output layer in :func:`sequence_logprobs` (HiGRPOConfig.logprob_chunk_tokens)
        self.logprob_chunk_tokens = LOGPROB_CHUNK_TOKENS

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        tokens_per_object: int = 1024,
        codebook_size: int | None = None,
        dtype: str | torch.dtype | None = None,
        use_chat_template: bool | None = None,
        meta: bool = False,
        **model_kwargs: Any,
    ) -> "MeshPolicy":
        """Load a local Hugging Face checkpoint directory (config + weights + tokenizer).

        Causal LMs load with ``AutoModelForCausalLM``; vision-language checkpoints such as ShapeLLM-Omni's
        Qwen2.5-VL (not a causal-LM class in transformers) with ``AutoModelForImageTextToText``, used
        text-only. ``meta``: the model is built on the meta device (shapes only, no host memory, no weights
        read; parameters in ``dtype``, buffers as the architecture computes them), to be sharded and then
        filled (:func:`rewardkit.rl.sharding.load_sharded_weights`).
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        config = AutoConfig.from_pretrained(str(path))
        auto = AutoModelForCausalLM if type(config) in AutoModelForCausalLM._model_mapping else AutoModelForImageTextToText
        if meta:
            from transformers import GenerationConfig

            with torch.device("meta"):
                model = auto.from_config(config)
            for p in model.parameters():  # parameters only: RoPE's inv_freq buffers stay float32
                p.data = p.data.to(dtype or torch.float32)
            if (path / "generation_config.json").exists():
                model.generation_config = GenerationConfig.from_pretrained(str(path))
        else:
            model = auto.from_pretrained(str(path), **model_kwargs)
        meta = path / "rewardkit_policy.json"
        if meta.exists():  # written by save_pretrained / build_tiny_policy
            info = json.loads(meta.read_text())
            tokens_per_object = info.get("tokens_per_object", tokens_per_object)
            codebook_size = codebook_size or info.get("codebook_size")
        return cls(model, tokenizer, tokens_per_object, codebook_size, use_chat_template)

    def save_pretrained(self, path: str | Path, model: nn.Module | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (model or self.model).save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))
        info = {"tokens_per_object": self.tokens_per_object, "codebook_size": self.vocab.codebook_size}
        (path / "rewardkit_policy.json").write_text(json.dumps(info, indent=2))
        return path

    # -- text <-> ids -------------------------------------------------------------------------------
    def encode_context(self, text: str) -> list[int]:
        if self.use_chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def mesh_sequence(self, codes: Sequence[int], end: bool = True) -> list[int]:
        """Token ids ``<mesh-start> <mesh c0> ... [<mesh-end>]`` of a code sequence."""
        ids = [self.vocab.mesh_start] + self.vocab.code_ids[torch.as_tensor(list(codes), dtype=torch.long)].tolist()
        return ids + [self.vocab.mesh_end] if end else ids

    # -- sampling -----------------------------------------------------------------------------------
    def _generate(self, model: nn.Module, contexts: list[list[int]], phase: int, max_new: int, s: SamplingConfig,
                  generator_seed: int | None) -> list[list[int]]:
        """New token ids of one phase for each context (up to and including the stop token). With a
        ``generator`` set (the vLLM rollout backend, :mod:`rewardkit.rl.vllm_rollout`) it samples instead
        of Hugging Face ``generate``; the phase logic around it is the same for both."""
        if self.generator is not None:
            return self.generator.generate(contexts, phase, max_new, s, generator_seed)
        from transformers import GenerationConfig, LogitsProcessorList

        device = next(model.parameters()).device
        L = max(len(c) for c in contexts)
        pad = self.vocab.pad_id
        ids = torch.full((len(contexts), L), pad, dtype=torch.long)
        att = torch.zeros((len(contexts), L), dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding
            ids[i, L - len(c):] = torch.tensor(c)
            att[i, L - len(c):] = 1
        if phase == PHASE_TEXT:
            stop = [self.vocab.mesh_start] + self.vocab.eos_ids
            temperature = s.temperature if s.reasoning_temperature is None else s.reasoning_temperature
        else:
            stop = [self.vocab.mesh_end]
            temperature = s.temperature
        proc = _Restrict(self.vocab, phase, L, self.tokens_per_object, s.force_mesh_length, device)
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        gen = getattr(model, "module", model)  # generation bypasses DDP wrappers (no grad needed)
        # every sampling knob explicit: unset ones would be filled from the checkpoint's
        # generation_config (e.g. top_k=50, repetition_penalty) and silently change the distribution
        # min_p: any value, 0.0 included, adds a min-p warper (a softmax over the vocabulary per token, about a
        # tenth of a tiny policy's generate time); None is off, but None is filled from the checkpoint's
        # generation_config, so 0.0 only where the checkpoint sets a min_p
        min_p = 0.0 if getattr(getattr(gen, "generation_config", None), "min_p", None) is not None else None
        gcfg = GenerationConfig(
            do_sample=True, temperature=temperature, top_p=s.top_p, top_k=max(0, s.top_k), min_p=min_p, typical_p=1.0,
            epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0, max_new_tokens=max_new, min_new_tokens=0, eos_token_id=stop, pad_token_id=pad,
        )
        out = gen.generate(
            input_ids=ids.to(device), attention_mask=att.to(device), generation_config=gcfg,
            logits_processor=LogitsProcessorList([proc]), synced_gpus=self.synced_generation,
        )
        new = out[:, L:].cpu().tolist()
        result = []
        for row in new:
            keep = []
            for t in row:
                keep.append(t)
                if t in stop:
                    break
            result.append(keep)
        return result

    @torch.no_grad()
    def rollout_step(
        self, model: nn.Module, contexts: list[str], sampling: SamplingConfig, seed: int | None = None
    ) -> list[StepRollout]:
        """Sample one Hi-GRPO step (reasoning, then mesh tokens) for each context string."""
        ctx_ids = [self.encode_context(c) for c in contexts]
        if sampling.max_reasoning_tokens > 0:
            reasoning = self._generate(model, ctx_ids, PHASE_TEXT, sampling.max_reasoning_tokens, sampling, seed)
        else:
            reasoning = [[] for _ in contexts]
        mesh_ctx, prefixes = [], []
        for c, r in zip(ctx_ids, reasoning):
            prompt, prefix, phases = mesh_phase_prompt(c, r, self.vocab)
            prefixes.append((prefix, phases))
            mesh_ctx.append(prompt)
        mesh = self._generate(
            model, mesh_ctx, PHASE_MESH, self.tokens_per_object + 1, sampling, None if seed is None else seed + 1
        )
        steps = []
        for c, (prefix, phases), m in zip(ctx_ids, prefixes, mesh):
            m_phases = [PHASE_MESH] * len(m)
            if sampling.force_mesh_length and m and m[-1] == self.vocab.mesh_end:
                m_phases[-1] = PHASE_FORCED  # the length rule chose it, not the policy
            codes = self._lut[torch.tensor(m, dtype=torch.long)] if m else torch.empty(0, dtype=torch.long)
            codes = codes[codes >= 0].tolist()
            reasoning_ids = prefix[:-1]
            steps.append(
                StepRollout(
                    context_ids=c,
                    completion_ids=prefix + m,
                    phases=phases + m_phases,
                    reasoning_text=self.decode_text(reasoning_ids),
                    codes=fit_codes(codes, self.tokens_per_object),
                    num_codes_emitted=len(codes),
                )
            )
        return steps

    def logprobs(self, model: nn.Module, batch: RolloutBatch, sampling: SamplingConfig,
                 return_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs under the distributions ``sampling`` sampled from (per-phase temperature);
        with ``return_entropy`` also those distributions' entropies."""
        allowed = None
        if sampling.constrain_logprobs:
            allowed = self._allowed_forced if sampling.force_mesh_length else self._allowed
        return sequence_logprobs(
            model, batch, temperature=sampling.temperature, allowed=allowed,
            reasoning_temperature=sampling.reasoning_temperature, return_entropy=return_entropy,
            chunk_tokens=self.logprob_chunk_tokens,
        )


# -- tiny policies for tests and the CPU demo ------------------------------------------------------

def build_tiny_policy(
    path: str | Path,
    words: Sequence[str],
    codebook_size: int,
    tokens_per_object: int,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int | None = None,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random-init tiny causal LM + word-level tokenizer with the mesh tokens to ``path``.

    Vocabulary: ``<pad> <unk> <eos>``, the given words, ``<mesh0>..<mesh{K-1}>``, ``<mesh-start>``,
    ``<mesh-end>`` (ShapeLLM-Omni also puts ``<mesh-end>`` last). ``arch`` is ``llama``, ``gpt2``, ``qwen2``
    (Qwen2 / Qwen2.5's text architecture) or ``qwen2_5_vl`` (ShapeLLM-Omni's architecture, a tiny vision
    tower included, used text-only). ``num_kv_heads`` (llama, qwen2, qwen2_5_vl): grouped-query attention's
    key/value heads (None: ``num_heads``). ``intermediate_size``: the MLP width (None: 4 x hidden).
    ``vocab_size``: pad the model's vocabulary to this many rows (e.g. Qwen2's 151936, for benchmarks of a
    real-sized output layer; the extra ids are never produced by the tokenizer). ``tie_word_embeddings``
    (llama, qwen2): share the input embedding and ``lm_head`` (Qwen2.5-0.5B does).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, normalizers, decoders
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    specials = ["<pad>", "<unk>", "<eos>"]
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    pieces = [p for w in words for p, _ in pre.pre_tokenize_str(w.lower())]
    uniq = [w for w in dict.fromkeys(pieces) if w not in specials]
    mesh = [f"<mesh{i}>" for i in range(codebook_size)] + [MESH_START, MESH_END]
    vocab = {t: i for i, t in enumerate(specials + uniq + mesh)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tk.add_special_tokens(specials + mesh)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(seed)
    n = max(len(vocab), vocab_size or 0)
    ffn = intermediate_size or hidden_size * 4
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=n, hidden_size=hidden_size, intermediate_size=ffn, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads, max_position_embeddings=max_positions,
            pad_token_id=vocab["<pad>"], eos_token_id=vocab["<eos>"], bos_token_id=None,
            tie_word_embeddings=tie_word_embeddings,
        )
    elif arch == "qwen2":
        from transformers import Qwen2Config

        cfg = Qwen2Config(
            vocab_size=n, hidden_size=hidden_size, intermediate_size=ffn, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads, max_position_embeddings=max_positions,
            pad_token_id=vocab["<pad>"], eos_token_id=vocab["<eos>"], bos_token_id=None,
            tie_word_embeddings=tie_word_embeddings,
        )
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=n, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
            pad_token_id=vocab["<pad>"], eos_token_id=vocab["<eos>"], bos_token_id=vocab["<eos>"],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    elif arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        head = hidden_size // num_heads
        third = head // 2 // 4  # multimodal rope: temporal/height/width sections of the rotary half
        cfg = Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=n, hidden_size=hidden_size, intermediate_size=ffn, num_hidden_layers=num_layers,
                num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads, max_position_embeddings=max_positions,
                rope_scaling={"type": "mrope", "mrope_section": [head // 2 - 2 * third, third, third]},
            ),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
                               fullatt_block_indexes=[0]),
            bos_token_id=None, eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
        )
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        raise ValueError(f"arch must be llama, gpt2, qwen2 or qwen2_5_vl, got {arch!r}")
    if arch != "qwen2_5_vl":
        model = AutoModelForCausalLM.from_config(cfg)
    policy = MeshPolicy(model, tok, tokens_per_object=tokens_per_object, codebook_size=codebook_size, use_chat_template=False)
    return policy.save_pretrained(path)
