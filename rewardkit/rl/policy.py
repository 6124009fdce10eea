"""Policy adapter: Hugging Face causal LMs whose vocabulary holds mesh tokens (ShapeLLM-Omni convention).

The token convention, the phase ids and the step records are in :mod:`rewardkit.rl.sequences`; the
log-probabilities of the sampled actions in :mod:`rewardkit.rl.logprobs` (both re-exported here). One
Hi-GRPO step is generated in two phases:

1. reasoning: free text sampled from the context until the model emits ``<mesh-start>`` or EOS
   (EOS is replaced by a forced ``<mesh-start>``, as the released AR3D-R1 code appends it literally);
2. mesh: exactly ``tokens_per_object`` codes then ``<mesh-end>`` (constrained sampling, so a sample
   always decodes; ``force_mesh_length: false`` lets the model end early and pads with the last code,
   which is ShapeLLM-Omni's parse rule).

The policy's actions are the reasoning tokens, a sampled ``<mesh-start>``, the codes and a sampled
``<mesh-end>``; forced tokens, tokens after the end and padding are masked out of the loss.
:meth:`MeshPolicy.logprobs` scores them with :func:`~rewardkit.rl.logprobs.sequence_logprobs` under the
distributions sampling used. :func:`build_tiny_policy` writes the tiny random policies of the tests and the
CPU demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from rewardkit.rl.logprobs import LOGPROB_CHUNK_TOKENS, forward_logits, output_layer, sequence_logprobs
from rewardkit.rl.sequences import (
    MESH_END,
    MESH_START,
    PHASE_FORCED,
    PHASE_MESH,
    PHASE_NONE,
    PHASE_TEXT,
    MeshVocab,
    RolloutBatch,
    StepRollout,
    mesh_phase_prompt,
)
from rewardkit.rl.tokenizers.base import fit_codes

__all__ = [
    "SamplingConfig",
    "MeshPolicy",
    "build_tiny_policy",
    # re-exported from rewardkit.rl.sequences and rewardkit.rl.logprobs
    "MeshVocab",
    "StepRollout",
    "RolloutBatch",
    "mesh_phase_prompt",
    "MESH_START", "MESH_END",
    "PHASE_NONE", "PHASE_TEXT", "PHASE_MESH", "PHASE_FORCED",
    "sequence_logprobs",
    "forward_logits",
    "output_layer",
    "LOGPROB_CHUNK_TOKENS",
]


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
    if arch in ("llama", "qwen2"):  # the same fields
        from transformers import Qwen2Config

        cfg = (LlamaConfig if arch == "llama" else Qwen2Config)(
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
