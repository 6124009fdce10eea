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

from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["SHARDED_STRATEGIES", "fsdp_strategy", "full_state_dict", "is_sharded", "load_sharded_weights"]

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


def _unwrapped_name(name: str) -> str:
    return name.replace("_checkpoint_wrapped_module.", "")


def load_sharded_weights(modules: Sequence[nn.Module], load_source: Callable[[], nn.Module]) -> None:
    """Fill FSDP-sharded ``modules`` (built on the meta device, then sharded and materialized by
    ``Fabric.setup_module``) with a checkpoint's weights, bounding host memory per rank: only rank 0
    calls ``load_source()`` (the full Hugging Face model in the checkpoint's own dtype, on the CPU: one copy
    per node, bf16 for ShapeLLM-Omni); each tensor is then broadcast to every rank, which keeps its own
    shard of it, cast to the module's dtype (torch's ``set_model_state_dict(..., broadcast_from_rank0=True)``,
    one tensor at a time). Buffers outside the state dict (RoPE's ``inv_freq``) are broadcast the same
    way. A collective: every rank calls it with the same modules, in the same order."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    rank0 = dist.get_rank() == 0
    src = load_source() if rank0 else None
    full = src.state_dict() if src is not None else {}
    buffers = {_unwrapped_name(n): b for n, b in src.named_buffers()} if src is not None else {}
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    for m in modules:
        m = getattr(m, "module", m)  # Fabric's wrapper
        set_model_state_dict(m, dict(full), options=opts)  # it replaces the values it was given
        for name, b in m.named_buffers():
            with torch.no_grad():
                if rank0:
                    b.copy_(buffers[_unwrapped_name(name)])
                dist.broadcast(b, src=0)
    del full, buffers, src
