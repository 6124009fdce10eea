"""``TrainConfig``: every setting of a training run, in one dataclass (TRL's ``RewardConfig`` convention).

Read from YAML or JSON (``load_train_config``); any field, nested ones included, can be overridden with
``key=value`` strings (``model.backbone.name=ViT-B-32``, ``lr=3e-4``, ``model.modes=[geometry,normal]``);
values are parsed as YAML scalars/lists. Files, sections and overrides are checked by
:mod:`rewardkit.config`: unknown keys, wrong types and invalid choices are :class:`ConfigError` s that
name the dotted key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewardkit import config as _config
from rewardkit.config import ConfigError
from rewardkit.models.stage import StageModelConfig


@dataclass
class TrainConfig:
    """Every setting of one stage's reward-model training run (data, model, optimisation, Lightning,
    evaluation/export). Build it with :meth:`from_dict` or :func:`load_train_config` (strict, typed)."""

    # -- what to train on ---------------------------------------------------------------------------
    stage: Literal["global", "local"] = "global"  # "global" | "local": the preferences question and the model's stage
    items: str = "data/items.parquet"
    pairs: str = "data/pairs.parquet"
    preferences: str = "data/preferences.parquet"
    # Optional parquet (pair_id, differs_in: "texture" | "geometry") of probe pairs for the disentanglement check.
    probes: str | None = None
    # Relative render_dir values are resolved against this folder (default: the items table's folder, then cwd).
    render_root: str | None = None
    out_dir: str = "out/train"
    # -- model --------------------------------------------------------------------------------------
    model: StageModelConfig = field(default_factory=StageModelConfig)
    # -- data ---------------------------------------------------------------------------------------
    views: list[int] | None = None  # which view indices of each mode to use (None: all)
    image_size: int | None = None  # resize on load (None: the model's load_size: the tower input, times n with view_tiles)
    augment_hflip: float = 0.0  # training views: probability of a horizontal mirror per candidate (train/augment.py)
    augment_shift: int = 0  # training views: random translation of up to this many pixels per candidate
    # Frozen image trunk (model.unlocked_image_blocks=0): encode each view once and train on the cached
    # features (rewardkit.train.features; keyed by render hash + tower, reused across epochs, stages, runs).
    feature_cache: bool = False
    feature_cache_dir: str | None = None  # None: $REWARDKIT_FEATURE_CACHE or ~/.cache/rewardkit/view_features
    val_fraction: float = 0.2  # fraction of prompts held out for validation
    test_fraction: float = 0.0  # optional test prompts (tie threshold / temperature then fitted on val)
    aggregate_annotators: bool = False  # average the labels of one pair into one soft target
    batch_size: int = 16
    num_workers: int = 0
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads (None: torch's default); 1 is fastest on a busy machine
    # -- optimisation -------------------------------------------------------------------------------
    max_epochs: int = 10
    max_steps: int = -1
    lr: float = 1e-4
    backbone_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.05
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # "cosine" | "constant"
    margin: float = 0.0
    tie_offset: bool = True
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    # -- Lightning ----------------------------------------------------------------------------------
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "cpu"  # Lightning's names (gpu = cuda)
    devices: Any = 1  # int, list or "auto"; multi-GPU: accelerator=gpu devices=4 strategy=ddp
    # Machines of a multi-node run (devices per node x num_nodes processes; launched by torchrun, SLURM or
    # Lightning on each node, docs/scale.md); rank 0 evaluates, reports and exports, the others wait.
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1
    resume: str | None = "auto"  # "auto": <out_dir>/checkpoints/last.ckpt if present; a path; or None
    save_top_k: int = 1
    monitor: str = "val/pairwise_accuracy"
    tensorboard: bool = True  # in addition to CSV, when tensorboard is installed
    # Progress on stderr: "auto"/true: a bar on a terminal, else one line per epoch with the validation
    # figures (logs, dvc); "bar" / "lines" force one of them; false: none.
    progress_bar: bool | Literal["auto", "bar", "lines"] = "auto"
    # -- evaluation / export ------------------------------------------------------------------------
    ece_bins: int = 10
    use_best_checkpoint: bool = True  # evaluate/export the best checkpoint by `monitor` (else the last weights)
    export: bool = True  # write <out_dir>/model (config.json + model.safetensors)

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            m = dict(self.model)
            m.setdefault("stage", self.stage)
            self.model = StageModelConfig.from_dict(m)
        if self.stage not in ("global", "local"):
            raise ValueError(f"stage must be 'global' or 'local', got {self.stage!r}")
        if self.model.stage != self.stage:
            # The stage decides the default render modes; rebuild the model config for this stage.
            m = self.model.to_dict()
            if m.get("modes") == StageModelConfig(stage=self.model.stage).modes:
                m["modes"] = None
            m["stage"] = self.stage
            self.model = StageModelConfig.from_dict(m)
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) with a sum below 1")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {self.num_nodes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """A TrainConfig from plain data, strictly typed (:func:`rewardkit.config.from_dict`)."""
        d = dict(d)
        if isinstance(d.get("model"), Mapping):  # the model section takes the run's stage unless it names one
            d["model"] = {"stage": d.get("stage", "global"), **d["model"]}
        return _config.from_dict(cls, d)


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys for nested sections) to a config dict, in place; a key
    that names no TrainConfig field is a :class:`ConfigError`."""
    return _config.apply_overrides(d, overrides, TrainConfig)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML/JSON config file (a one-line :class:`ConfigError` if missing or malformed)."""
    return _config.load_file(path)


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = (), **fixed: Any) -> TrainConfig:
    """Config file (optional) < ``overrides`` (key=value) < ``fixed`` keyword fields (e.g. ``stage``)."""
    d = load_config_file(path) if path else {}
    apply_overrides(d, overrides)
    for k, v in fixed.items():
        if v is not None:
            d[k] = v
    return TrainConfig.from_dict(d)


__all__ = ["ConfigError", "TrainConfig", "apply_overrides", "load_config_file", "load_train_config"]
