"""Checkpoints and exports of a Hi-GRPO run (:class:`Checkpointer`): full or LoRA-adapter checkpoints with the optimizer and
scheduler state, torch distributed (sharded) checkpoints under FSDP, and the final Hugging Face policy."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from rewardkit.rl.lora import is_lora, load_adapter, merged_state_dict, save_adapter
from rewardkit.rl.sharding import full_state_dict

__all__ = ["Checkpointer"]

log = logging.getLogger("rewardkit.rl.trainer")


class Checkpointer:
    """Saving and resuming for :class:`~rewardkit.rl.trainer.HiGRPOTrainer`.

    ``out``: the run's ``output_dir``; ``policy``: the :class:`~rewardkit.rl.MeshPolicy` (tokenizer, sizes);
    ``model``/``optimizer``: as Fabric set them up, ``scheduler`` the learning-rate schedule; ``fabric``:
    ranks; ``sharded``: FSDP (torch distributed checkpoints, collectives); ``keep_checkpoints``: how many
    ``step-N`` folders stay."""

    def __init__(self, out: Path, policy: Any, model: Any, optimizer: Any, scheduler: Any, fabric: Any, *,
                 sharded: bool, keep_checkpoints: int):
        self.out, self.policy, self.model, self.optimizer, self.scheduler = Path(out), policy, model, optimizer, scheduler
        self.fabric, self.sharded, self.keep_checkpoints = fabric, sharded, keep_checkpoints

    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    def unwrapped(self) -> torch.nn.Module:
        """The trained module without Fabric's wrapper (the PEFT model under LoRA)."""
        m = self.model
        return getattr(m, "module", m)

    def save_policy(self, path: str | Path) -> Path | None:
        """A plain Hugging Face checkpoint of the current policy (LoRA adapters merged in; FSDP shards
        consolidated: a collective then, call it on every rank; rank 0 writes)."""
        model = self.unwrapped()
        if self.sharded:
            sd = full_state_dict(model)
            if self.is_main:
                path = Path(path)
                path.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(str(path), state_dict=sd, safe_serialization=True)
                self.policy.tokenizer.save_pretrained(str(path))
                info = {"tokens_per_object": self.policy.tokens_per_object, "codebook_size": self.policy.vocab.codebook_size}
                (path / "rewardkit_policy.json").write_text(json.dumps(info, indent=2))
            self.fabric.barrier()
            return Path(path)
        if not is_lora(model):
            return self.policy.save_pretrained(path, model=model)
        base = model.get_base_model()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        base.save_pretrained(str(path), state_dict=merged_state_dict(model), safe_serialization=True)
        self.policy.tokenizer.save_pretrained(str(path))
        info = {"tokens_per_object": self.policy.tokens_per_object, "codebook_size": self.policy.vocab.codebook_size}
        (path / "rewardkit_policy.json").write_text(json.dumps(info, indent=2))
        return path

    def save_checkpoint(self, step: int) -> Path | None:
        """``output_dir/checkpoints/step-N/`` (N = ``step``): ``policy/`` (safetensors) + ``trainer_state.pt``
        (optimizer state, step; tensors only, loadable with ``weights_only=True``)."""
        d = self.out / "checkpoints" / f"step-{step:06d}"
        if self.sharded:  # every rank writes its shards (torch distributed checkpoint)
            self.fabric.save(d / "state", {"model": self.model, "optimizer": self.optimizer, "step": step,
                                           "scheduler": self.scheduler.state_dict()})
        if self.is_main:
            if self.sharded:
                pass
            elif is_lora(self.unwrapped()):
                save_adapter(self.unwrapped(), d / "adapter")
            else:
                self.policy.save_pretrained(d / "policy", model=self.unwrapped())
            if not self.sharded:
                torch.save({"step": step, "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.scheduler.state_dict()}, d / "trainer_state.pt")
            (self.out / "checkpoints" / "latest").write_text(d.name)
            old = sorted(p for p in (self.out / "checkpoints").glob("step-*") if p != d)
            import shutil

            for p in old[: max(0, len(old) - max(0, self.keep_checkpoints - 1))]:
                shutil.rmtree(p, ignore_errors=True)
        self.fabric.barrier()
        return d

    def load_checkpoint(self, path: str | Path | None = None) -> int | None:
        """Restore policy weights, optimizer and scheduler state from ``path`` (default: latest); returns the
        checkpoint's step, None when there is no checkpoint."""
        if path is None:
            latest = self.out / "checkpoints" / "latest"
            if not latest.exists():
                log.info("no checkpoint under %s; starting fresh", self.out)
                return None
            path = self.out / "checkpoints" / latest.read_text().strip()
        path = Path(path)
        model = self.unwrapped()
        if self.sharded:  # resharded to this run's devices by torch distributed checkpoint
            rest = self.fabric.load(path / "state", {"model": self.model, "optimizer": self.optimizer})
            self.scheduler.load_state_dict(rest["scheduler"])
            return int(rest["step"])
        if is_lora(model):
            load_adapter(model, path / "adapter")
        else:
            # through from_pretrained, so the library's own checkpoint key conversions apply
            saved = type(model).from_pretrained(str(path / "policy"), dtype=next(model.parameters()).dtype)
            model.load_state_dict(saved.state_dict())
            del saved
        ts = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(ts["optimizer"])
        step = int(ts["step"])
        if "scheduler" in ts:
            self.scheduler.load_state_dict(ts["scheduler"])
        else:  # a checkpoint from before schedules: continue the schedule at this step
            self.scheduler.last_epoch = step
        return step
