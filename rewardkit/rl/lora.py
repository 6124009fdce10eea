"""LoRA adapters (Hugging Face PEFT) on the policy: the reference policy is the base model with the
adapters disabled, so no second copy of the weights is kept.

``peft`` is an optional dependency (``pip install peft``); nothing here is imported unless a config
asks for LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

__all__ = ["LoRAConfig", "apply_lora", "lora_target_names", "is_lora", "merged_state_dict", "save_adapter", "load_adapter"]

# the attention and MLP projections of Llama / Qwen2 / Qwen2.5-VL decoder layers
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    """Low-rank adapters on the policy's linear layers (PEFT's ``LoraConfig``)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0  # > 0 makes the ratio compare two different functions; keep 0 for RL
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("lora needs the peft package (pip install peft)") from e
    return peft


def lora_target_names(model: nn.Module, target_modules: Sequence[str]) -> list[str]:
    """Full names of the modules that get adapters: those named ``target_modules`` in the language model.
    PEFT matches names by suffix, and Qwen2.5-VL's vision blocks have gate/up/down projections too (frozen
    and unused in text-only rollouts: adapters there would never get a gradient, which DDP refuses)."""
    vision = ("visual", "vision_tower", "vision_model")
    wanted = set(target_modules)
    return [n for n, _ in model.named_modules()
            if n.split(".")[-1] in wanted and not any(v in n.split(".") for v in vision)]


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """``model`` wrapped with trainable adapters; every base weight is frozen."""
    peft = _peft()
    targets = lora_target_names(model, cfg.target_modules)
    if not targets:
        raise ValueError(f"lora.target_modules {cfg.target_modules} match no module of {type(model).__name__}")
    lc = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                         target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, lc)
    except ValueError as e:
        raise ValueError(f"lora.target_modules {cfg.target_modules} do not fit {type(model).__name__}: {e}") from e


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def merged_state_dict(model: nn.Module) -> dict[str, Any]:
    """The base model's state dict with the adapters merged in, under the base model's own key names
    (a plain Hugging Face checkpoint). The adapters are unmerged again afterwards."""
    model.merge_adapter()
    try:
        base = model.get_base_model()
        out = {}
        for k, v in base.state_dict().items():
            if ".lora_" in k:
                continue
            out[k.replace(".base_layer.", ".")] = v.detach().clone()
        return out
    finally:
        model.unmerge_adapter()


def save_adapter(model: nn.Module, path: str | Path) -> None:
    model.save_pretrained(str(path), safe_serialization=True)


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load adapter weights saved by :func:`save_adapter` into ``model`` (the same LoRA config)."""
    peft = _peft()
    from safetensors.torch import load_file

    f = Path(path) / "adapter_model.safetensors"
    peft.set_peft_model_state_dict(model, load_file(str(f)))
