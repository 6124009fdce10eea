"""The mesh token convention of the policies (ShapeLLM-Omni / AR3D-R1) and the records of one sampled step.

An object is ``<mesh-start><mesh{i0}>...<mesh{iM-1}><mesh-end>`` with one vocabulary token per code
``<meshN>`` (N < codebook size; M = 1024 for ShapeLLM-Omni's VQVAE, fewer for the tiny test tokenizers).
:class:`MeshVocab` finds these tokens in a tokenizer; each completion position carries a phase id
(``PHASE_TEXT``, ``PHASE_MESH``, ``PHASE_FORCED``; ``PHASE_NONE`` for context and padding), so the
log-probs can be constrained the way sampling was (:mod:`rewardkit.rl.logprobs`).
:class:`StepRollout` is one sampled step (reasoning + mesh) of one sample, :class:`RolloutBatch` a padded
batch of them; :func:`mesh_phase_prompt` builds the mesh phase's prompt after the reasoning phase.
Sampling itself is in :mod:`rewardkit.rl.policy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "MESH_START", "MESH_END",
    "PHASE_NONE", "PHASE_TEXT", "PHASE_MESH", "PHASE_FORCED",
    "MeshVocab",
    "StepRollout",
    "RolloutBatch",
    "mesh_phase_prompt",
]

MESH_START, MESH_END = "<mesh-start>", "<mesh-end>"
_MESH_RE = re.compile(r"^<mesh(\d+)>$")

# phase ids of completion positions, used to constrain log-probs the way sampling was constrained
PHASE_NONE, PHASE_TEXT, PHASE_MESH, PHASE_FORCED = 0, 1, 2, 3


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
