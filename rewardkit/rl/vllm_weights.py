"""The weights a colocated vLLM engine receives from the policy (pure torch: tested on CPU, FSDP included).

:func:`policy_weights` streams ``(name, full tensor)`` pairs under the names of the policy's Hugging Face
checkpoint, looking through wrappers (Fabric, activation checkpointing, ``torch.compile``, FSDP2's sharded
parameters, gathered one at a time) and merging LoRA adapters beside the model.
:func:`changing_weight_names` says which weights training can change, :func:`sync_weight_names` which must be
sent so that every engine layer holding one of them (fused layers included) is rebuilt whole.
Used by :class:`rewardkit.rl.vllm_rollout.VLLMGenerator`; vLLM itself is not imported here.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

__all__ = ["policy_weights", "changing_weight_names", "sync_weight_names", "checkpoint_weight_names",
           "PACKED_MODULES"]

_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


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


# fused vLLM layers that take several Hugging Face weights (Llama / Qwen2 / Qwen2.5-VL's language model);
# the engine's own ``packed_modules_mapping`` is used when it has one
PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def sync_weight_names(changing: set[str], names: Sequence[str],
                      packed: dict[str, list[str]] | None = None) -> set[str]:
    """The weights to send so every engine layer that holds a changed weight gets all of its weights.

    vLLM's ``reload_weights`` reloads layer by layer: a layer whose weights all arrive is rebuilt from them,
    a layer none of whose weights arrive keeps its tensors, and a layer only part of whose weights arrive is
    rebuilt with the rest uninitialised. Fused layers (``qkv_proj`` = q, k, v; ``gate_up_proj`` = gate, up)
    take several checkpoint weights, so a LoRA that adapts only ``q_proj`` must still send k and v. Returns
    ``changing`` plus every weight of the same module and of its fused siblings; frozen modules (a vision
    tower, ``lm_head``, norms under LoRA) stay out."""
    packed = packed or PACKED_MODULES
    sibling: dict[str, list[str]] = {leaf: group for group in packed.values() for leaf in group}

    def layer(name: str) -> str:
        module = name.rpartition(".")[0]
        parent, _, leaf = module.rpartition(".")
        group = sibling.get(leaf)
        return f"{parent}.{'+'.join(group)}" if group else module

    touched = {layer(n) for n in changing}
    return {n for n in names if layer(n) in touched}


def checkpoint_weight_names(model: nn.Module) -> list[str]:
    """The Hugging Face names of every weight of the policy (LoRA adapters excluded, adapted layers under
    their base names), in state-dict order."""
    model = getattr(model, "module", model)
    base = model.get_base_model() if _lora_layers(model) else model
    return [_clean(n).replace(".base_layer.", ".") for n in base.state_dict() if ".lora_" not in n]
