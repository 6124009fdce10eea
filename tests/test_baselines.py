"""Baselines (clip-multiview, hps-multiview) with tiny random open_clip weights written in the real formats:
an open_clip state dict in safetensors (CLIP) and HPS's ``{'state_dict': sd}`` torch file (HPS v2.1)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from helpers.scoring import mesh_files, write_tiny_clip_weights

from rewardkit.cli import main
from rewardkit.scoring import ScorerError, load_scorer, score_meshes
from rewardkit.scoring.baselines import ClipMultiviewScorer, HpsMultiviewScorer, load_baseline


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_tiny_clip_weights(tmp_path_factory.mktemp("clipw"))


def _reference_cos(model, views, prompts):
    """Per-view cosine computed directly with open_clip (views already at the model's input size)."""
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    b, v = views.shape[:2]
    with torch.no_grad():
        img = F.normalize(model.encode_image((views.flatten(0, 1) - mean) / std), dim=-1).view(b, v, -1)
        tok = open_clip.get_tokenizer("rk-test-clip")(prompts)
        txt = F.normalize(model.encode_text(tok), dim=-1)
    return torch.einsum("bvd,bd->bv", img, txt)


def test_clip_multiview_matches_reference(weights):
    s = load_baseline("clip-multiview", weights["clip"], arch=weights["config"], render_size=64, camera="orbit4")
    assert isinstance(s, ClipMultiviewScorer) and s.modes == ["rgb"]
    views = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a red chair", "a wooden table"]
    out = s.score_views(views, prompts, per_view=True)
    cos = _reference_cos(weights["model"].eval(), views, prompts)
    assert torch.allclose(out.per_view, 100 * cos, atol=1e-4)
    assert torch.allclose(out.scores, 100 * cos.mean(dim=1), atol=1e-4)


def test_large_views_are_preprocessed_in_chunks_with_the_same_result(weights, monkeypatch):
    """Views larger than the tower's input are resized a few at a time (bounded memory), same scores."""
    import rewardkit.models.preprocess as pre_mod

    s = load_baseline("clip-multiview", weights["clip"], arch=weights["config"], render_size=64, camera="orbit4")
    views = torch.randint(0, 256, (2, 3, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole = s.score_views(views, ["a", "b"], per_view=True).per_view
    monkeypatch.setattr(pre_mod, "PREPROCESS_CHUNK_PIXELS", 2 * 48 * 48)  # 6 views: 3 chunks of 2
    calls, real = [], pre_mod.preprocess_views  # the stage models' preprocessing, shared by the baselines
    monkeypatch.setattr(pre_mod, "preprocess_views", lambda x, *a, **k: calls.append(x.shape[0]) or real(x, *a, **k))
    chunked = s.score_views(views, ["a", "b"], per_view=True).per_view
    assert calls == [6, 2, 2, 2]  # the forward's one call, then its chunks of 2
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert s._preprocess(views.flatten(0, 1)).shape[0] == 6


def test_hps_multiview_max_over_views_and_floor(weights):
    s = load_baseline("hps-multiview", weights["hps"], arch=weights["config"])
    assert isinstance(s, HpsMultiviewScorer) and s.floor == 0.0
    views = torch.rand(3, 6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a red chair", "a lamp", "a cat"]
    out = s.score_views(views, prompts, per_view=True)
    cos = _reference_cos(weights["model"].eval(), views, prompts)
    assert torch.allclose(out.per_view, cos, atol=1e-5)
    assert torch.allclose(out.scores, cos.max(dim=1).values.clamp(min=0.0), atol=1e-5)
    raw = HpsMultiviewScorer.from_weights(weights["hps"], arch=weights["config"], floor=None)
    assert torch.allclose(raw.score_views(views, prompts).scores, cos.max(dim=1).values, atol=1e-5)


def test_baseline_is_differentiable(weights):
    s = load_baseline("clip-multiview", weights["clip"], arch=weights["config"])
    v = torch.rand(1, 4, 3, 48, 48, requires_grad=True)  # resized inside, differentiably
    s.score_views(v, ["x"], grad=True).scores.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in s.module.parameters())


def test_baseline_export_round_trip_and_mesh_scoring(weights, tmp_path):
    s = load_baseline("hps-multiview", weights["hps"], arch=weights["config"], render_size=64, camera="orbit4")
    d = s.save_pretrained(tmp_path / "hps")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["kind"] == "hps-multiview" and cfg["architecture"]["aggregation"] == "max"
    assert cfg["architecture"]["open_clip_config"]["embed_dim"] == 32
    assert "AR3D-R1" in (d / "README.md").read_text()
    loaded = load_scorer(d)
    assert isinstance(loaded, HpsMultiviewScorer) and loaded.floor == 0.0
    mesh = mesh_files()["red_box"]
    a = score_meshes([mesh], "a red box", s)[0].scores["hps-multiview"]
    b = score_meshes([mesh], "a red box", loaded)[0].scores["hps-multiview"]
    assert a == pytest.approx(b, abs=1e-6)


def test_baseline_cli_spec(weights):
    r = CliRunner().invoke(main, ["score", str(mesh_files()["cone"]), "--prompt", "a cone",
                                  "--scorer", f"clip-multiview:{weights['clip']}",
                                  "--scorer", f"hps-multiview:{weights['hps']}",
                                  "--baseline-arch", str(weights["config"]), "--render-size", "32", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"][0]
    assert set(res["scores"]) == {"clip-multiview", "hps-multiview"}


def test_local_files_only(weights, tmp_path):
    with pytest.raises(ScorerError, match="not found.*nothing is downloaded"):
        load_baseline("hps-multiview", tmp_path / "HPS_v2.1_compressed.pt", arch=weights["config"])
    with pytest.raises(ScorerError, match="unknown baseline"):
        load_baseline("imagereward", weights["hps"])
    # weights of another architecture: a clear error, not a crash
    with pytest.raises(ScorerError, match="cannot load backbone weights"):
        load_baseline("hps-multiview", weights["hps"], arch="rk-tiny")
