"""Reward models: backbone factory (open_clip), multi-view fusion, the per-stage reward model, losses.

Public surface::

    from rewardkit.models import StageModelConfig, StageRewardModel, BackboneConfig
    model = StageRewardModel(StageModelConfig(stage="global", backbone=BackboneConfig("rk-tiny")))
    reward = model(views, prompts)          # views [B, V, 3, H, W] in [0, 1] -> reward [B]
    model.save_pretrained(dir); StageRewardModel.from_pretrained(dir)
    StageEnsemble(model, heads)             # N reward heads on one model's towers: mean and std (ensemble.py)
"""

from rewardkit.models.backbone import (
    BackboneConfig,
    BackboneError,
    create_backbone,
    freeze_backbone,
    get_tokenizer,
    list_backbones,
    load_backbone_weights,
    register_model_config,
)
from rewardkit.models.ensemble import RewardHead, StageEnsemble, head_reward
from rewardkit.models.fusion import AttentionViewPool, MeanViewPool
from rewardkit.models.losses import (
    BradleyTerryLoss,
    bradley_terry_loss,
    prompt_weights,
    target_from_label,
    targets_from_labels,
)
from rewardkit.models.stage import (
    DEFAULT_MODES,
    RENDER_MODES,
    STAGES,
    StageModelConfig,
    StageRewardModel,
    trainable_parameters,
)

__all__ = [
    "AttentionViewPool", "BackboneConfig", "BackboneError", "BradleyTerryLoss", "DEFAULT_MODES", "MeanViewPool",
    "RENDER_MODES", "RewardHead", "STAGES", "StageEnsemble", "head_reward", "StageModelConfig", "StageRewardModel", "bradley_terry_loss", "create_backbone",
    "freeze_backbone", "get_tokenizer", "list_backbones", "load_backbone_weights", "prompt_weights",
    "register_model_config", "target_from_label", "targets_from_labels", "trainable_parameters",
]
