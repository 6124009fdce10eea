"""Backbone factory, multi-view fusion and the stage reward model (tiny architectures, random weights)."""

from __future__ import annotations

import json

import pytest
import torch

from rewardkit.models import (
    AttentionViewPool,
    BackboneConfig,
    BackboneError,
    MeanViewPool,
    StageModelConfig,
    StageRewardModel,
    create_backbone,
    list_backbones,
    trainable_parameters,
)
from rewardkit.models.backbone import image_blocks


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(stage: str = "global", **kw) -> StageRewardModel:
    return StageRewardModel(StageModelConfig(stage=stage, backbone=BackboneConfig("rk-tiny", image_size=32), **kw))


# ------------------------------------------------------------------------------------------------- #
# backbone factory
def test_bundled_configs_are_registered_with_open_clip():
    import open_clip

    names = list_backbones()
    assert {"rk-tiny", "rk-tiny-rn", "rk-small"} <= set(names)
    cfg = open_clip.get_model_config("rk-tiny")
    assert cfg["vision_cfg"]["image_size"] == 64
    assert open_clip.get_model_config("rk-tiny-rn")["vision_cfg"]["layers"] == [1, 1, 1, 1]  # a ResNet tower


def _state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_hps_state_dict_format_loads_through_the_factory(tmp_path):
    # HPS v2/v2.1 ship {'state_dict': sd} for open_clip ViT-H-14 (hpsv2 builds the model with open_clip
    # and calls load_state_dict(checkpoint['state_dict'])); same format, tiny architecture.
    src = create_backbone(BackboneConfig("rk-tiny"))
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": sd}, path)
    fresh = create_backbone(BackboneConfig("rk-tiny"))
    assert not all(torch.equal(fresh.state_dict()[k], sd[k]) for k in sd)  # really a different init
    loaded = create_backbone(BackboneConfig("rk-tiny", pretrained=str(path)))
    _state_equal(loaded.state_dict(), sd)
    # ... and the same checkpoint as a stage model's backbone
    model = StageRewardModel(StageModelConfig(backbone=BackboneConfig("rk-tiny", pretrained=str(path))))
    _state_equal(model.backbone.state_dict(), sd)


def test_other_local_checkpoint_forms(tmp_path):
    from safetensors.torch import save_file

    src = create_backbone(BackboneConfig("rk-tiny"))
    sd = {k: v.clone().contiguous() for k, v in src.state_dict().items()}
    # DDP-style "module." prefix
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")
    _state_equal(create_backbone(BackboneConfig("rk-tiny", pretrained=str(tmp_path / "ddp.pt"))).state_dict(), sd)
    # a folder holding open_clip_model.safetensors
    (tmp_path / "dir").mkdir()
    save_file(sd, tmp_path / "dir" / "open_clip_model.safetensors")
    _state_equal(create_backbone({"name": "rk-tiny", "pretrained": str(tmp_path / "dir")}).state_dict(), sd)


def test_backbone_errors_are_clear_and_never_download(tmp_path):
    with pytest.raises(BackboneError, match="unknown backbone architecture"):
        create_backbone(BackboneConfig("no-such-arch"))
    # not a file, not a folder, not a tag of this architecture: fails without any network access
    with pytest.raises(BackboneError, match="neither a local file"):
        create_backbone(BackboneConfig("rk-tiny", pretrained="not-a-real-tag"))
    # a checkpoint of another architecture
    small = create_backbone(BackboneConfig("rk-small"))
    torch.save({"state_dict": small.state_dict()}, tmp_path / "small.pt")
    with pytest.raises(BackboneError, match="cannot load backbone weights"):
        create_backbone(BackboneConfig("rk-tiny", pretrained=str(tmp_path / "small.pt")))
    # no pickled code: weights_only loading refuses arbitrary objects
    torch.save({"state_dict": {"x": object()}}, tmp_path / "evil.pt")
    with pytest.raises(BackboneError):
        create_backbone(BackboneConfig("rk-tiny", pretrained=str(tmp_path / "evil.pt")))


def test_image_size_override_resizes_position_embeddings_on_load(tmp_path):
    src = create_backbone(BackboneConfig("rk-tiny"))  # 64 px, 8 px patches -> 8x8 grid
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    m = create_backbone(BackboneConfig("rk-tiny", pretrained=str(tmp_path / "w.pt"), image_size=32))
    assert m.visual.positional_embedding.shape[0] == 4 * 4 + 1
    assert torch.equal(m.visual.conv1.weight, src.visual.conv1.weight)


# ------------------------------------------------------------------------------------------------- #
# stage model
def test_stage_modes_and_config_validation():
    assert StageModelConfig(stage="global").modes == ["geometry"]
    assert StageModelConfig(stage="local").modes == ["rgb"]
    assert StageModelConfig(stage="global", modes="geometry,normal").modes == ["geometry", "normal"]
    with pytest.raises(ValueError, match="must not see rgb"):
        StageModelConfig(stage="global", modes=["rgb"])
    with pytest.raises(ValueError, match="stage must be"):
        StageModelConfig(stage="middle")
    with pytest.raises(ValueError, match="unknown StageModelConfig fields"):
        StageModelConfig.from_dict({"stage": "local", "bogus": 1})


def test_forward_contract_any_number_of_views():
    m = tiny("local").eval()
    prompts = ["a red chair", "a blue car"]
    for v in (1, 3, 6, 40):  # 40 > max_views: slots wrap around
        r = m(torch.rand(2, v, 3, 48, 48), prompts)
        assert r.shape == (2,) and torch.isfinite(r).all()
    d = m(torch.rand(2, 6, 3, 32, 32), prompts, return_details=True)
    assert set(d) >= {"reward", "alignment", "quality", "view_alignment", "view_weights", "view_mask"}
    assert d["view_alignment"].shape == (2, 6) and d["view_weights"].shape == (2, 6)
    assert torch.allclose(d["view_weights"].sum(1), torch.ones(2))
    assert torch.allclose(d["reward"], d["alignment"] + d["quality"])
    # a single mesh [V, 3, H, W]; uint8 input is the same as float / 255
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(m(x, ["p"]), m(x.float() / 255, ["p"]), atol=1e-5)
    # text features instead of prompts
    tf = m.encode_text(prompts)
    x2 = torch.rand(2, 3, 3, 32, 32)
    assert torch.allclose(m(x2, prompts), m(x2, text_features=tf), atol=1e-6)
    with pytest.raises(ValueError, match="views must be"):
        m(torch.rand(2, 3, 32, 32, 3), prompts)


def test_two_modes_as_dict_or_concatenated():
    m = tiny("global", modes=["geometry", "normal"]).eval()
    g, n = torch.rand(2, 3, 3, 32, 32), torch.rand(2, 3, 3, 32, 32)
    a = m({"geometry": g, "normal": n}, ["x", "y"])
    b = m(torch.cat([g, n], 1), ["x", "y"])
    assert torch.allclose(a, b, atol=1e-6)
    # the mode embedding matters: swapping the modes changes the fused score
    with torch.no_grad():
        m.fusion.query.normal_()
    assert not torch.allclose(m({"geometry": g, "normal": n}, ["x", "y"]), m({"geometry": n, "normal": g}, ["x", "y"]))
    with pytest.raises(ValueError, match="missing"):
        m({"geometry": g}, ["x", "y"])


def test_attention_pool_starts_as_mean_and_respects_the_mask():
    torch.manual_seed(1)
    att, mean = AttentionViewPool(16, max_views=8), MeanViewPool()
    f = torch.randn(3, 5, 16)
    mi, vi = torch.zeros(5, dtype=torch.long), torch.arange(5)
    assert torch.allclose(att(f, mi, vi)[0], mean(f, mi, vi)[0], atol=1e-6)  # zero query = uniform weights
    with torch.no_grad():
        att.query.normal_()
    mask = torch.tensor([[1, 1, 0, 0, 1]] * 3, dtype=torch.bool)
    p1, w = att(f, mi, vi, mask)
    f2 = f.clone()
    f2[:, 2:4] = 100.0  # masked views do not matter
    p2, _ = att(f2, mi, vi, mask)
    assert torch.allclose(p1, p2) and torch.all(w[..., 2:4] == 0)


def test_view_mask_and_view_dropout():
    m = tiny("local", view_dropout=0.5)
    x = torch.rand(4, 6, 3, 32, 32)
    m.eval()
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 3:] = False
    x2 = x.clone()
    x2[:, 3:] = 0.0
    assert torch.allclose(m(x, ["p"] * 4, view_mask=mask), m(x2, ["p"] * 4, view_mask=mask), atol=1e-6)
    # eval: no dropout; train: dropout drawn from the generator, reproducible, never drops every view
    assert torch.all(m(x, ["p"] * 4, return_details=True)["view_mask"])
    m.train()
    masks = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        masks.append(m(x, ["p"] * 4, generator=g, return_details=True)["view_mask"])
    assert torch.equal(masks[0], masks[1])
    assert not masks[0].all() and masks[0].any(dim=1).all()
    one_view = m.fusion.dropout_mask(torch.ones(64, 1, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert one_view.all()


def test_freezing_options():
    m = tiny("global")  # default: text locked, whole image tower trains
    text = [n for n, p in m.backbone.named_parameters() if not n.startswith("visual.")]
    assert text and not any(p.requires_grad for n, p in m.backbone.named_parameters() if n in text)
    assert all(p.requires_grad for p in m.backbone.visual.parameters())
    m = tiny("global", unlocked_image_blocks=1)
    blocks = image_blocks(m.backbone)
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for b in blocks[:-1] for p in b.parameters())
    assert m.backbone.visual.proj.requires_grad and not m.backbone.visual.conv1.weight.requires_grad
    # gradients reach only what is trainable
    r = m(torch.rand(2, 2, 3, 32, 32), ["a", "b"])
    r.sum().backward()
    assert m.backbone.visual.conv1.weight.grad is None and m.backbone.token_embedding.weight.grad is None
    assert blocks[-1].mlp.c_fc.weight.grad is not None and m.fusion.key.weight.grad is not None
    m = tiny("global", unlocked_image_blocks=0, lock_text=False)
    assert not any(p.requires_grad for p in m.backbone.visual.parameters())
    assert m.backbone.token_embedding.weight.requires_grad
    assert len(trainable_parameters(m)) > 0


def test_resnet_tower_scores_any_view_count_and_freezes_by_stage():
    """``rk-tiny-rn`` (open_clip's ModifiedResNet image tower): the same model class, any number of views,
    and ``unlocked_image_blocks`` counts its residual stages."""
    m = StageRewardModel(StageModelConfig(stage="global", backbone=BackboneConfig("rk-tiny-rn"), lock_text=False,
                                          unlocked_image_blocks=1))
    blocks = image_blocks(m.backbone)
    assert len(blocks) == 4 and blocks[-1] is m.backbone.visual.layer4
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert all(p.requires_grad for p in m.backbone.visual.attnpool.parameters())
    assert not any(p.requires_grad for b in blocks[:-1] for p in b.parameters())
    assert not m.backbone.visual.conv1.weight.requires_grad
    for v in (1, 3, 6):
        r = m(torch.rand(2, v, 3, 64, 64), ["a red chair", "a mug"])
        assert r.shape == (2,) and torch.isfinite(r).all()
    r.sum().backward()
    assert m.backbone.visual.layer4[0].conv1.weight.grad is not None and m.backbone.visual.conv1.weight.grad is None


def test_differentiable_in_the_views_and_deterministic():
    m = tiny("local").eval()
    x = torch.rand(2, 3, 3, 40, 40, requires_grad=True)
    r = m(x, ["a", "b"])
    r.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(m(x, ["a", "b"]), m(x, ["a", "b"]))


def test_preprocess_in_chunks_matches_one_pass_and_keeps_the_gradient(monkeypatch):
    """Large views are converted to float a few at a time (bounded memory); the result is the one-pass one."""
    import rewardkit.models.preprocess as pre_mod

    m = tiny("global").eval()
    u8 = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8)
    x = torch.rand(5, 3, 48, 48, requires_grad=True)
    whole_u8, whole_x = m.preprocess(u8), m.preprocess(x)
    monkeypatch.setattr(pre_mod, "PREPROCESS_CHUNK_PIXELS", 2 * 48 * 48)  # 2 views a step: 3 chunks
    calls = []
    real = torch.cat
    monkeypatch.setattr(torch, "cat", lambda ts, *a, **k: calls.append(len(ts)) or real(ts, *a, **k))
    chunked_u8, chunked_x = m.preprocess(u8), m.preprocess(x)
    assert calls[:2] == [3, 3]
    assert torch.equal(whole_u8, chunked_u8) and torch.allclose(whole_x, chunked_x, atol=0, rtol=0)
    chunked_x.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_save_and_load_pretrained_roundtrip(tmp_path):
    m = tiny("global", modes=["geometry", "normal"], fusion_heads=2, quality_hidden=8).eval()
    with torch.no_grad():
        m.fusion.query.normal_()
        for p in m.quality.parameters():
            p.normal_()
    x = torch.rand(2, 4, 3, 32, 32)
    out = m.save_pretrained(tmp_path / "model", extra={"note": "test"})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stage"] == "global" and cfg["modes"] == ["geometry", "normal"] and cfg["note"] == "test"
    assert cfg["model"]["backbone"]["name"] == "rk-tiny" and cfg["preprocess"]["size"] == 32
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.pt")) and not list(out.glob("*.bin"))
    m2 = StageRewardModel.from_pretrained(out)
    assert torch.allclose(m(x, ["a", "b"]), m2(x, ["a", "b"]), atol=1e-6)
    # to_config_dict/from_config_dict + load_weights (the scorer's path)
    m3 = StageRewardModel.from_config_dict(m.to_config_dict())
    m3.load_weights(out / "model.safetensors")
    assert torch.allclose(m(x, ["a", "b"]), m3.eval()(x, ["a", "b"]), atol=1e-6)
    # state_dict compatible
    m4 = StageRewardModel.from_config_dict(m.to_config_dict())
    m4.load_state_dict(m.state_dict())
    assert torch.allclose(m(x, ["a", "b"]), m4.eval()(x, ["a", "b"]), atol=1e-6)


def test_from_config_dict_does_not_reload_backbone_weights(tmp_path):
    src = create_backbone(BackboneConfig("rk-tiny"))
    with torch.no_grad():  # a checkpoint no random initialization can match
        for p in src.state_dict().values():
            if p.is_floating_point():
                p.fill_(0.123)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    m = StageRewardModel(StageModelConfig(backbone=BackboneConfig("rk-tiny", pretrained=str(tmp_path / "w.pt"))))

    def from_checkpoint(model: StageRewardModel) -> list[str]:
        return [k for k, v in model.backbone.state_dict().items()
                if v.is_floating_point() and v.numel() > 1 and torch.all(v == 0.123)]

    loaded = from_checkpoint(m)
    assert len(loaded) > 10  # the constructor did load the checkpoint
    cfg = m.to_config_dict()
    assert cfg["model"]["backbone"]["pretrained"] == str(tmp_path / "w.pt")  # recorded, yet not reloaded:
    rebuilt = StageRewardModel.from_config_dict(cfg)
    assert from_checkpoint(rebuilt) == []
    assert from_checkpoint(StageRewardModel.from_config_dict(cfg, load_backbone_weights=True)) == loaded
    (tmp_path / "w.pt").unlink()  # the exported config must not need the original checkpoint (or a download)
    assert from_checkpoint(StageRewardModel.from_config_dict(cfg)) == []


def test_view_tiles_cut_the_object_not_the_background():
    from rewardkit.models.stage import object_box, view_tiles

    v = torch.ones(3, 64, 64)
    v[:, 16:48, 24:40] = 0.2                      # a dark object 32 tall, 16 wide, on a white background
    v[0, 16:32, 24:40] = 0.9                      # its top half reddish
    assert object_box(v) == (16, 16, 48, 48)      # square, centred on the object
    assert object_box(torch.ones(3, 8, 8)) == (0, 0, 8, 8)  # nothing but background: the whole view
    t = view_tiles(v[None, None], 2, 32)
    assert t.shape == (1, 5, 3, 32, 32)           # whole + 2 x 2 tiles
    assert torch.allclose(t[0, 0], torch.nn.functional.interpolate(v[None], size=(32, 32), mode="bilinear", antialias=True)[0])
    top_left, bottom_left = t[0, 1], t[0, 3]      # row-major tiles of the 32 x 32 box, each at 32 px
    assert top_left[0, 24:, 24:].mean() > 0.85 and bottom_left[0, :8, 24:].mean() < 0.3
    assert view_tiles(v[None, None], 2, 32, keep_whole=False).shape == (1, 4, 3, 32, 32)
    with pytest.raises(ValueError, match="view_tiles"):
        StageModelConfig(stage="local", view_tiles=1)
    with pytest.raises(ValueError, match="tiles_only"):
        StageModelConfig(stage="local", tiles_only=True)
    m = StageRewardModel(StageModelConfig(stage="local", backbone=BackboneConfig("rk-tiny"), view_tiles=2))
    assert m.load_size == 2 * m.image_size
    feats, mode_index, view_index = m.encode_views(torch.rand(2, 3, 3, 128, 128))
    assert feats.shape[:2] == (2, 3 * 5) and view_index.tolist() == list(range(15))
    assert mode_index.tolist() == [0] * 15        # the tiles are views of the same mode
    assert m(torch.rand(2, 3, 3, 128, 128), ["a", "b"]).shape == (2,)
