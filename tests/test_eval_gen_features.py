"""Each feature extractor of rewardkit.eval.generation loads from local weights in its real file format: a
random-init model is created here, saved the way its ecosystem saves it, loaded by rewardkit, and its
features compared with the original model's own forward pass (for pytorch-fid: with pytorch-fid's network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardkit.eval.generation.features import FeatureError, load_clip, load_dinov2, load_inception


def _images(n=3, size=299, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _as_input(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def torchvision_inception(tmp_path_factory):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=True).eval()
    path = tmp_path_factory.mktemp("tv") / "inception_v3_google.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_torchvision_inception_pool_features(torchvision_inception):
    net, path = torchvision_inception
    ext = load_inception(path)  # auto: 1000 classes + AuxLogits -> torchvision
    assert ext.details["format"] == "torchvision" and ext.dim == 2048
    imgs = _images()
    feats = ext(imgs)
    net.fc = torch.nn.Identity()
    with torch.inference_mode():
        want = net(_as_input(imgs) * 2 - 1).numpy()  # ImageNet-normalized input + transform_input == 2x - 1
    assert feats.shape == (3, 2048)
    np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5)
    assert load_inception(path, input_size=299).fingerprint == ext.fingerprint
    assert load_inception(path, input_size=139).fingerprint != ext.fingerprint


def test_pytorch_fid_inception_matches_pytorch_fid(tmp_path, monkeypatch):
    import pytorch_fid.inception as pfi

    torch.manual_seed(1)
    fid_net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in [("Mixed_5b", pfi.FIDInceptionA(192, pool_features=32)), ("Mixed_5c", pfi.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", pfi.FIDInceptionA(288, pool_features=64)), ("Mixed_6b", pfi.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", pfi.FIDInceptionC(768, channels_7x7=160)), ("Mixed_6d", pfi.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", pfi.FIDInceptionC(768, channels_7x7=192)), ("Mixed_7b", pfi.FIDInceptionE_1(1280)),
                        ("Mixed_7c", pfi.FIDInceptionE_2(2048))]:
        setattr(fid_net, name, block)
    # random weights with non-trivial batch-norm statistics, saved as pytorch-fid's pt_inception file
    sd = {k: (torch.randn_like(v) * 0.05 if v.is_floating_point() and "num_batches" not in k else v)
          for k, v in fid_net.state_dict().items()}
    sd = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in sd.items()}
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, path)
    # pytorch-fid's own InceptionV3 (FID blocks, resize + [-1, 1] scaling), fed that file instead of the URL
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: torch.load(path, weights_only=True))
    theirs = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], use_fid_inception=True).eval()
    ext = load_inception(path)
    assert ext.details["format"] == "pytorch-fid"
    imgs = _images(seed=2)
    with torch.inference_mode():
        want = theirs(_as_input(imgs))[0].reshape(3, -1).numpy()
    np.testing.assert_allclose(ext(imgs), want, rtol=1e-4, atol=1e-4)
    # the same weights in the torchvision layout give other features (the pools differ)
    with pytest.raises(FeatureError, match="not a torchvision Inception-V3"):
        load_inception(path, fmt="torchvision")


def test_inception_errors(tmp_path):
    with pytest.raises(FeatureError, match="not found"):
        load_inception(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FeatureError, match="cannot read weights"):
        load_inception(bad)


def test_huggingface_dinov2_folder(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=56, patch_size=14)
    net = Dinov2Model(cfg).eval()
    net.save_pretrained(tmp_path / "dinov2")
    ext = load_dinov2(tmp_path / "dinov2", input_size=56)
    imgs = _images(size=56)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        out = net(pixel_values=(_as_input(imgs) - mean) / std)
    want = out.last_hidden_state[:, 0].numpy()  # the CLS token after the final layer norm
    np.testing.assert_allclose(ext(imgs), want, rtol=1e-4, atol=1e-5)
    assert ext.dim == 32


def test_timm_dinov2_folder(tmp_path):
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    args = dict(depth=2, embed_dim=48, num_heads=2, img_size=56)
    net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, **args).eval()
    save_for_hf(net, str(tmp_path / "timm"), model_args=args, safe_serialization=True)
    ext = load_dinov2(tmp_path / "timm", input_size=56)
    imgs = _images(size=56)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = net.forward_features((_as_input(imgs) - mean) / std)[:, 0].numpy()
    np.testing.assert_allclose(ext(imgs), want, rtol=1e-4, atol=1e-5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"architecture": "resnet18"}')
    with pytest.raises(FeatureError, match="not a DINOv2"):
        load_dinov2(tmp_path / "other")


def test_open_clip_checkpoint(tmp_path):
    from rewardkit.models.backbone import BackboneConfig, create_backbone

    torch.manual_seed(0)
    net = create_backbone(BackboneConfig(name="rk-tiny")).eval()
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    ext = load_clip("rk-tiny", path)
    imgs = _images(size=64)
    feats = ext(imgs)
    text = ext.encode_text(["a cube", "a ball"])
    assert feats.shape == (3, ext.dim) and text.shape == (2, ext.dim)
    with torch.inference_mode():
        pp_mean = torch.tensor(net.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
        pp_std = torch.tensor(net.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
        want = net.encode_image((_as_input(imgs) - pp_mean) / pp_std).numpy()
    np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(FeatureError, match="no weights"):
        load_clip("rk-tiny", None)
