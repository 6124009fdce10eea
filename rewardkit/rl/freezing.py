"""Which policy parameters RL trains: named groups (vision tower, embeddings, ``lm_head``) or patterns.

AR3D-R1's release freezes the Qwen2.5-VL vision tower (``visual*``, its merger included) and ``lm_head``
and trains the LLM blocks and the embeddings. That is the default for ``qwen2_5_vl`` policies here; it
also keeps DDP from failing on parameters that never receive a gradient (the vision tower is unused by a
text-only rollout).
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Sequence

from torch import nn

__all__ = ["GROUPS", "default_freeze", "freeze_parameters"]

log = logging.getLogger(__name__)

# group name -> how to find its parameters on a Hugging Face model
GROUPS = ("vision_tower", "embeddings", "lm_head")


def default_freeze(model: nn.Module) -> list[str]:
    """The released recipe's choice for this architecture: vision tower + lm_head for vision-language
    policies (Qwen2.5-VL), nothing for text-only causal LMs."""
    return ["vision_tower", "lm_head"] if _vision_names(model) else []


def _vision_names(model: nn.Module) -> list[str]:
    """Parameter names of the vision tower (a module named ``visual`` / ``vision_tower`` / ``vision_model``)."""
    keys = ("visual", "vision_tower", "vision_model")
    return [n for n, _ in model.named_parameters() if any(k in n.split(".") for k in keys)]


def _group_names(model: nn.Module, group: str) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    if group == "vision_tower":
        return _vision_names(model)
    if group in ("embeddings", "lm_head"):
        mod = model.get_input_embeddings() if group == "embeddings" else model.get_output_embeddings()
        return [by_id[id(p)] for p in (mod.parameters() if mod is not None else []) if id(p) in by_id]
    raise KeyError(group)


def freeze_parameters(model: nn.Module, freeze: Sequence[str] | None) -> list[str]:
    """Set ``requires_grad=False`` on the parameters ``freeze`` names and return their names.

    Each entry is a group of :data:`GROUPS` or an ``fnmatch`` pattern over parameter names (e.g.
    ``"model.language_model.layers.0.*"``). ``None`` is :func:`default_freeze`. An entry that matches
    nothing is an error (a typo would otherwise train what was meant to stay fixed).
    """
    entries = default_freeze(model) if freeze is None else list(freeze)
    names = [n for n, _ in model.named_parameters()]
    chosen: list[str] = []
    for e in entries:
        hit = _group_names(model, e) if e in GROUPS else fnmatch.filter(names, e)
        if not hit:
            raise ValueError(f"freeze entry {e!r} matches no parameter of {type(model).__name__} "
                             f"(groups: {', '.join(GROUPS)}, or fnmatch patterns over parameter names)")
        chosen += hit
    chosen = list(dict.fromkeys(chosen))
    params = dict(model.named_parameters())
    for n in chosen:
        params[n].requires_grad_(False)
    if chosen:
        n_frozen = sum(params[n].numel() for n in chosen)
        total = sum(p.numel() for p in params.values())
        log.info("frozen: %s (%d of %d parameters)", ", ".join(entries), n_frozen, total)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is not None and head is not None and emb.weight is head.weight and "lm_head" in entries and "embeddings" not in entries:
        log.warning("lm_head is tied to the input embeddings: freezing it freezes the embeddings too")
    return chosen
