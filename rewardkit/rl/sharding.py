"""Sharded training of the policy with PyTorch's own FSDP (``fully_shard``, FSDP2) through Lightning
Fabric's ``ModelParallelStrategy``.

``strategy: fsdp`` shards parameters, gradients and AdamW states over all devices (``data_parallel``
mesh dimension; tensor parallelism stays 1), one FSDP unit per decoder layer (the classes in the model's
``_no_split_modules``, the vision blocks of Qwen2.5-VL included) plus the root. Under ``bf16-mixed``
the all-gathered parameters are bf16 and gradients are reduced in fp32; the master weights and optimizer
states stay fp32. Checkpoints are PyTorch distributed checkpoints (one file per rank plus metadata) that
load on the same or another number of devices; :func:`full_state_dict` gathers a consolidated copy for
the Hugging Face export. Lightning's older ``FSDPStrategy`` refuses CPUs; this path also runs on CPU
(gloo), which is how the test suite checks it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SHARDED_STRATEGIES", "fsdp_strategy", "full_state_dict", "is_sharded"]

SHARDED_STRATEGIES = ("fsdp",)


def _layer_classes(model: nn.Module) -> tuple[type, ...]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = tuple({type(m) for m in model.modules() if type(m).__name__ in names})
    if not classes:
        raise ValueError(f"{type(model).__name__} declares no decoder layer classes (_no_split_modules) to shard by")
    return classes


def fsdp_strategy(precision: str, world_size: int, backend: str | None = None) -> Any:
    """A Fabric ``ModelParallelStrategy`` that fully shards a Hugging Face model by decoder layer."""
    from lightning.fabric.strategies import ModelParallelStrategy

    def parallelize(model: nn.Module, device_mesh: Any) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = device_mesh["data_parallel"]
        kw: dict[str, Any] = {"mesh": mesh}
        if precision == "bf16-mixed":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        classes = _layer_classes(model)
        for m in list(model.modules()):
            if isinstance(m, classes):
                fully_shard(m, **kw)
        fully_shard(model, **kw)
        return model

    return ModelParallelStrategy(parallelize_fn=parallelize, data_parallel_size=world_size, tensor_parallel_size=1,
                                 save_distributed_checkpoint=True, process_group_backend=backend)


def is_sharded(strategy: Any) -> bool:
    return isinstance(strategy, str) and strategy in SHARDED_STRATEGIES


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A consolidated CPU state dict of a sharded module (a collective: call it on every rank; the tensors
    are complete on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
