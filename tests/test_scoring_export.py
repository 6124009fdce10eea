"""Exported scorer directories: contents, round trip, scorer sets, version checks, clear errors, no pickles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.scoring import CAMERA, RENDER_SIZE, scorer_set_dir, tiny_model, tiny_scorer

from rewardkit import __version__
from rewardkit.scoring import Scorer, ScorerError, ScorerSet, ScorerVersionError, load_scorer


def _views(seed=0, b=2, v=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, v, 3, RENDER_SIZE, RENDER_SIZE, generator=g)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    scorer = tiny_scorer("global", seed=3)
    d = scorer.save_pretrained(tmp_path_factory.mktemp("exp") / "global")
    return scorer, d


def test_directory_contents(exported):
    scorer, d = exported
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["format"] == "rewardkit.scorer" and cfg["format_version"] == 1
    assert cfg["rewardkit_version"] == __version__
    assert cfg["stage"] == "global" and cfg["render_modes"] == ["geometry"]
    assert cfg["camera_protocol"]["name"] == CAMERA and cfg["camera_protocol"]["size"] == RENDER_SIZE
    assert cfg["camera_protocol"]["version"] >= 1
    arch = cfg["architecture"]
    assert arch["architecture"] == "StageRewardModel"
    assert arch["model"]["backbone"]["name"] == "rk-tiny"
    assert arch["preprocess"]["size"] == 64 and len(arch["preprocess"]["mean"]) == 3
    assert cfg["training_data"]["pairs"] == 12 and cfg["metrics"]["val_accuracy"] == 0.75
    assert "background" in cfg["render_config"]
    assert cfg["library_versions"]["torch"]
    card = (d / "README.md").read_text()
    assert "global" in card and "val_accuracy" in card and "orbit4" in card and "rewardkit score" in card
    # weights are plain tensors in safetensors and cover the whole model
    sd = load_file(str(d / "model.safetensors"))
    assert set(sd) == set(scorer.model.state_dict())


def test_round_trip_scores_identical(exported):
    scorer, d = exported
    loaded = Scorer.from_pretrained(d)
    assert loaded.stage == "global" and loaded.modes == ["geometry"] and loaded.render_size == RENDER_SIZE
    assert loaded.camera == scorer.camera
    v = _views()
    a = scorer.score_views(v, ["a red chair", "a lamp"]).scores
    b = loaded.score_views(v, ["a red chair", "a lamp"]).scores
    assert torch.equal(a, b)
    # dict input and broadcast prompt give the same
    c = loaded.score_views({"geometry": v}, "a red chair").scores
    assert float(c[0]) == pytest.approx(float(b[0]), abs=1e-5)


def test_scorer_set_round_trip():
    d = scorer_set_dir()
    assert (d / "config.json").is_file() and (d / "README.md").is_file()
    s = load_scorer(d)
    assert isinstance(s, ScorerSet) and s.names() == ["global", "local"]
    assert s.global_scorer.modes == ["geometry"] and s.local_scorer.modes == ["rgb"]
    assert ScorerSet.from_pretrained(d).names() == ["global", "local"]
    with pytest.raises(ScorerError, match="ScorerSet"):
        Scorer.from_pretrained(d)
    # a single scorer dir loads as a one-scorer set too
    assert ScorerSet.from_pretrained(d / "local").names() == ["local"]


def test_no_pickles_anywhere():
    d = scorer_set_dir()
    files = [p for p in d.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md"}
    for p in files:
        if p.suffix == ".safetensors":
            assert p.read_bytes()[8:9] == b"{"  # safetensors header, not a pickle (b"\x80")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if "." in k:
            a, b = k.split(".")
            cfg[a][b] = v
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def test_version_checks(exported, tmp_path):
    _, d = exported
    newer = _copy(d, tmp_path / "newer")
    _edit(newer, rewardkit_version="9.1.0")
    with pytest.raises(ScorerVersionError, match=r"written by rewardkit 9\.1\.0.*this is rewardkit"):
        load_scorer(newer)
    fmt = _copy(d, tmp_path / "fmt")
    _edit(fmt, format_version=99)
    with pytest.raises(ScorerVersionError, match="format version 99 is newer"):
        load_scorer(fmt)
    proto = _copy(d, tmp_path / "proto")
    _edit(proto, **{"camera_protocol.version": 99})
    with pytest.raises(ScorerVersionError, match="camera protocol"):
        load_scorer(proto)
    older = _copy(d, tmp_path / "older")
    _edit(older, rewardkit_version="0.0.1")
    s = load_scorer(older)  # older patch/minor of the same major: loads, with a warning
    assert any("0.0.1" in w for w in s.load_warnings)


def test_bad_directories(exported, tmp_path):
    _, d = exported
    with pytest.raises(ScorerError, match="not found"):
        load_scorer(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScorerError, match="no config.json"):
        load_scorer(empty)
    bad_json = _copy(d, tmp_path / "badjson")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ScorerError, match="not valid JSON"):
        load_scorer(bad_json)
    other = _copy(d, tmp_path / "other")
    _edit(other, format="something.else")
    with pytest.raises(ScorerError, match="expected 'rewardkit.scorer'"):
        load_scorer(other)
    no_w = _copy(d, tmp_path / "now")
    (no_w / "model.safetensors").unlink()
    with pytest.raises(ScorerError, match="model.safetensors is missing"):
        load_scorer(no_w)
    garbage = _copy(d, tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ScorerError, match="cannot read safetensors"):
        load_scorer(garbage)
    kind = _copy(d, tmp_path / "kind")
    _edit(kind, kind="mystery")
    with pytest.raises(ScorerError, match="unknown scorer kind 'mystery'"):
        load_scorer(kind)


def test_weights_must_match_architecture(exported, tmp_path):
    _, d = exported
    mism = _copy(d, tmp_path / "mism")
    cfg = json.loads((mism / "config.json").read_text())
    cfg["architecture"]["model"]["quality_hidden"] = 8  # the config now describes a different head
    (mism / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ScorerError, match="does not match the architecture"):
        load_scorer(mism)


def test_scorer_from_model_defaults():
    s = Scorer(tiny_model("local", 5))
    assert s.name == "local" and s.camera.name == "orbit6" and s.render_size == 512
    assert "local" in repr(s)
