"""The one config grammar (rewardkit.config): strict, typed, nested; the dotted --set overrides."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from rewardkit.config import (
    ConfigError,
    ConfigFileNotFoundError,
    apply_overrides,
    from_dict,
    load_file,
    parse_override,
)


@dataclass
class Inner:
    temperature: float = 1.0
    top_k: int = 0
    name: str | None = None


@dataclass
class Outer:
    lr: float = 1e-4
    max_epochs: int = 10
    accelerator: Literal["auto", "cpu", "gpu"] = "cpu"
    deterministic: bool = True
    views: list[int] | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    devices: int | str = 1
    extra: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    progress: bool | Literal["auto", "bar"] = "auto"

    def __post_init__(self) -> None:
        if self.max_epochs < 0:
            raise ValueError("max_epochs must be >= 0")


def test_valid_values_are_converted_by_type():
    c = from_dict(Outer, {"lr": "3e-4", "max_epochs": 3.0, "deterministic": "no", "views": [0, "2"],
                          "betas": [0.8, 0.9], "devices": "auto", "extra": {"a": 1},
                          "inner": {"temperature": 2, "name": None}, "progress": True})
    assert c == Outer(lr=3e-4, max_epochs=3, deterministic=False, views=[0, 2], betas=(0.8, 0.9), devices="auto",
                      extra={"a": 1}, inner=Inner(temperature=2.0), progress=True)
    assert isinstance(c.inner.temperature, float) and isinstance(c.max_epochs, int)
    assert from_dict(Outer, {"devices": 2}).devices == 2  # int | str keeps an int an int
    assert from_dict(Outer, {"progress": "bar"}).progress == "bar"
    assert from_dict(Outer, {}) == Outer()


@pytest.mark.parametrize("data, message", [
    ({"lr": "abc"}, "config key 'lr': expected a float, got 'abc'"),
    ({"max_epochs": "ten"}, "config key 'max_epochs': expected an int, got 'ten'"),
    ({"max_epochs": 2.5}, "config key 'max_epochs': expected an int, got 2.5"),
    ({"accelerator": "tpu2"}, "config key 'accelerator': 'tpu2' is not one of 'auto', 'cpu', 'gpu'"),
    ({"deterministic": "maybe"}, "config key 'deterministic': expected a bool"),
    ({"views": "0,1"}, "config key 'views': expected a list"),
    ({"betas": [0.9]}, "config key 'betas': expected a list of 2 values"),
    ({"inner": {"top_k": "x"}}, "config key 'inner.top_k': expected an int, got 'x'"),
    ({"inner": 3}, "config key 'inner': expected a mapping of Inner fields"),
    ({"lrr": 1}, "unknown config key 'lrr' (did you mean 'lr'?)"),
    ({"inner": {"temperatur": 2}}, "unknown config key 'inner.temperatur' (did you mean 'inner.temperature'?)"),
    ({"zzz": 1}, "unknown config key 'zzz': unknown Outer fields"),
    ({"max_epochs": -1}, "max_epochs must be >= 0"),
])
def test_bad_values_are_one_line_errors_naming_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_dotted_overrides_parse_yaml_and_check_keys():
    assert parse_override("inner.temperature=0.7") == (["inner", "temperature"], 0.7)
    assert parse_override("lr=3e-4") == (["lr"], 3e-4)  # YAML 1.1 reads 3e-4 as text; it is a number here
    d = apply_overrides({"inner": {"top_k": 5}}, ["inner.temperature=2", "views=[1, 2]", "extra.k=v"], Outer)
    assert d == {"inner": {"top_k": 5, "temperature": 2}, "views": [1, 2], "extra": {"k": "v"}}
    assert from_dict(Outer, d).inner == Inner(temperature=2.0, top_k=5)
    # a whole section as a YAML/JSON mapping: parsed, then checked like a file
    d = apply_overrides({}, ['inner={"temperatur": 2}'], Outer)
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.temperatur' \(did you mean 'inner.temperature'"):
        from_dict(Outer, d)
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.tmp'"):
        apply_overrides({}, ["inner.tmp=1"], Outer)
    with pytest.raises(ConfigError, match="lr.x: lr is not a section"):
        apply_overrides({}, ["lr.x=1"], Outer)
    with pytest.raises(ConfigError, match="not key=value"):
        apply_overrides({}, ["lr"], Outer)
    assert apply_overrides({}, {"inner.top_k": 3}, Outer) == {"inner": {"top_k": 3}}  # a mapping of dotted keys


def test_files_missing_or_malformed_name_the_file_and_line(tmp_path):
    with pytest.raises(ConfigFileNotFoundError, match="nope.yaml: config file not found"):
        load_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1\nmodel: [a\nx: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: malformed YAML"):
        load_file(bad)
    badj = tmp_path / "bad.json"
    badj.write_text('{\n  "lr": 1,\n}\n')
    with pytest.raises(ConfigError, match=r"bad.json:3: malformed JSON"):
        load_file(badj)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_file(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_file(tmp_path / "empty.yaml") == {}


def test_every_config_class_uses_the_grammar():
    from rewardkit.models.stage import StageModelConfig
    from rewardkit.rl.trainer import HiGRPOConfig
    from rewardkit.train.config import TrainConfig, load_train_config

    with pytest.raises(ConfigError, match=r"'model.backbone.nme' \(did you mean 'model.backbone.name'"):
        TrainConfig.from_dict({"model": {"backbone": {"nme": "x"}}})
    with pytest.raises(ConfigError, match="config key 'fusion': 'max' is not one of 'attention', 'mean'"):
        StageModelConfig.from_dict({"fusion": "max"})
    with pytest.raises(ConfigError, match=r"'sampling.temperatur' \(did you mean 'sampling.temperature'"):
        HiGRPOConfig.from_dict({"sampling": {"temperatur": 2}})
    with pytest.raises(ConfigError, match="'warm_start.steps': expected an int"):
        HiGRPOConfig.from_dict({"warm_start": {"steps": "many"}})
    with pytest.raises(ConfigError, match="'reward_on_error': 'ignore' is not one of 'raise', 'mark'"):
        HiGRPOConfig.from_dict({"reward_on_error": "ignore"})
    cfg = HiGRPOConfig.from_dict({"sampling": {"temperature": 2}, "adam_betas": [0.8, 0.9], "devices": "auto"})
    assert (cfg.sampling.temperature, cfg.adam_betas, cfg.devices) == (2.0, (0.8, 0.9), "auto")
    # the model section follows the run's stage unless it names one (local: rgb)
    assert load_train_config(None, ["stage=local", "model.lock_text=false"]).model.modes == ["rgb"]
    assert load_train_config(None, ["progress_bar=lines"]).progress_bar == "lines"
    assert TrainConfig().progress_bar == "auto"


def test_hi_grpo_reward_terms_and_shape_tokenizer_are_typed():
    from rewardkit.rl.trainer import HiGRPOConfig

    cfg = HiGRPOConfig.from_dict({
        "rewards_global": [{"builtin": "occupancy_iou", "weight": "0.5"}],
        "rewards_local": [{"scorer": "data/scorers", "args": {"stage": "local"}, "dims": 3}],
        "shape_tokenizer": {"type": "voxel_blocks", "resolution": 4},
    })
    assert (cfg.rewards_global[0].builtin, cfg.rewards_global[0].weight) == ("occupancy_iou", 0.5)
    assert (cfg.rewards_local[0].source, cfg.rewards_local[0].dims) == ("scorer", 3.0)
    assert (cfg.shape_tokenizer.type, cfg.shape_tokenizer.resolution) == ("voxel_blocks", 4)
    # a config built in Python goes through the same grammar
    assert HiGRPOConfig(rewards_global=[{"builtin": "surface_f1"}]).rewards_global[0].builtin == "surface_f1"
    bad = [
        ({"rewards_high": []}, "config key 'rewards_high' was renamed: use 'rewards_global'"),
        ({"rewards_low": []}, "config key 'rewards_low' was renamed: use 'rewards_local'"),
        ({"rewards_global": [{"builtin": "iou"}]}, "'rewards_global[0].builtin': 'iou' is not one of 'occupancy_iou'"),
        ({"rewards_global": [{"builtin": "surface_f1", "wieght": 2}]},
         "'rewards_global[0].wieght' (did you mean 'rewards_global[0].weight'"),
        ({"rewards_local": [{"fn": "m:f", "weight": "heavy"}]}, "'rewards_local[0].weight': expected a float"),
        ({"rewards_local": [{"fn": "m:f", "scorer": "s"}]}, "exactly one of builtin/fn/scorer/url, got ['fn', 'scorer']"),
        ({"rewards_local": [{"url": "http://x", "uncertainty_penalty": -1}]}, "uncertainty_penalty must be >= 0"),
        ({"shape_tokenizer": {"type": "vqvae"}}, "'shape_tokenizer.type': 'vqvae' is not one of 'voxel_blocks'"),
        ({"shape_tokenizer": {"type": "shapellm_vqvae"}}, "type shapellm_vqvae needs 'weights'"),
        ({"shape_tokenizer": {"type": "shapellm_vqvae", "weights": "w.bin", "block": 2}},
         "block is not a setting of type shapellm_vqvae"),
        ({"shape_tokenizer": {"resolution": 8, "device": "cuda"}}, "device is not a setting of type voxel_blocks"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            HiGRPOConfig.from_dict(data)
    with pytest.raises(ConfigError, match="'rewards_high' was renamed: use 'rewards_global'"):
        apply_overrides({}, ["rewards_high=[]"], HiGRPOConfig)
