"""Per-token log-probabilities of a policy's sampled actions, without a ``[B, L, V]`` logits tensor.

:func:`sequence_logprobs` gives the log-probabilities (and optionally the entropies) of the scored tokens of a
:class:`~rewardkit.rl.sequences.RolloutBatch` under any model with the same vocabulary (current, old or frozen
reference policy), at the temperature and under the token constraints each position was sampled with. The
output layer (:func:`output_layer`) is applied to the scored positions only, ``LOGPROB_CHUNK_TOKENS`` at a
time; :func:`forward_logits` runs a Lightning Fabric-wrapped model without its float32 cast of the logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rewardkit.rl.sequences import PHASE_MESH, PHASE_TEXT, RolloutBatch

__all__ = ["forward_logits", "output_layer", "LOGPROB_CHUNK_TOKENS", "sequence_logprobs"]


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
