"""Training per-stage reward models with Lightning: config, data module, Lightning module, the run."""

from rewardkit.train.config import TrainConfig, apply_overrides, load_train_config
from rewardkit.train.data import (
    EpochShuffleSampler,
    PreferenceDataModule,
    PreferencePairDataset,
    ViewCache,
    build_examples,
    collate_pairs,
    split_prompts,
)
from rewardkit.train.ensemble import EnsembleConfig
from rewardkit.train.module import RewardModelModule
from rewardkit.train.trainer import (
    TrainResult,
    evaluate,
    model_from_checkpoint,
    plot_learning_curve,
    predict_deltas,
    train,
)

__all__ = [
    "EnsembleConfig", "EpochShuffleSampler", "PreferenceDataModule", "PreferencePairDataset", "RewardModelModule", "TrainConfig",
    "TrainResult", "ViewCache", "apply_overrides", "build_examples", "collate_pairs", "evaluate",
    "load_train_config", "model_from_checkpoint", "plot_learning_curve", "predict_deltas", "split_prompts", "train",
]
