"""Planning a run before it starts: what it will need, from the model's architecture alone.

- :mod:`rewardkit.plan.memory`  the per-device memory plan of a Hi-GRPO run (DDP, FSDP, LoRA): parameters,
  gradients, optimizer states, the reference policy, activations and logits (``plan_memory``, ``plan_for_config``)
"""
