"""Training: prompt split, data module, config/overrides, learnability on real renders, resume, the CLI.

The learnability data set is rendered once per module (``helpers.models.make_preference_dataset``):
trimesh primitives through ``rewardkit.render`` at 64 px, two views, loaded at 32 px for the tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import polars as pl
import pytest
import torch
import yaml
from click.testing import CliRunner

from rewardkit.data.tables import TableError, write_table
from rewardkit.models import StageRewardModel
from rewardkit.train import (
    PreferenceDataModule,
    TrainConfig,
    apply_overrides,
    build_examples,
    load_train_config,
    model_from_checkpoint,
    predict_deltas,
    split_prompts,
    train,
)
from rewardkit.train.trainer import metrics_csv_paths, read_metrics_log

from helpers.models import make_preference_dataset

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:OpenGL"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]

# Small and fast: tiny backbone at 32 px, one CPU thread (fastest on a busy 2-core machine).
FAST = {
    "model": {"backbone": {"name": "rk-tiny", "image_size": 32}},
    "image_size": 32, "batch_size": 32, "lr": 2e-3, "val_fraction": 0.25, "num_threads": 1,
    "progress_bar": False, "tensorboard": False, "log_every_n_steps": 5,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    return make_preference_dataset(tmp_path_factory.mktemp("rk-pref-data"), n_prompts=48, size=64)


@pytest.fixture(autouse=True)
def _restore_torch_state():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def config(dataset, tmp_path, stage, **kw) -> TrainConfig:
    d = json.loads(json.dumps(FAST))
    d.update(stage=stage, items=str(dataset["items"]), pairs=str(dataset["pairs"]),
             preferences=str(dataset["preferences"]), probes=str(dataset["probes"]), out_dir=str(tmp_path / stage))
    for k, v in kw.items():
        if k == "model":
            d["model"].update(v)
        else:
            d[k] = v
    return TrainConfig.from_dict(d)


# ------------------------------------------------------------------------------------------------- #
# split and data
def test_split_by_prompt_is_seeded_and_order_free():
    ids = [f"p{i}" for i in range(50)]
    a = split_prompts(ids, 0.2, 0.1, seed=3)
    assert split_prompts(list(reversed(ids)) * 2, 0.2, 0.1, seed=3) == a
    assert split_prompts(ids, 0.2, 0.1, seed=4) != a
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 35, "val": 10, "test": 5}
    assert set(split_prompts(["x", "y"], 0.2, seed=0).values()) == {"train", "val"}  # at least one val prompt
    assert set(split_prompts(["x"], 0.5, seed=0).values()) == {"train"}  # never an empty train split


@pytest.mark.slow
def test_data_module_has_no_prompt_leakage(dataset):
    dm = PreferenceDataModule(dataset["items"], dataset["pairs"], dataset["preferences"], stage="global",
                              modes=["geometry"], image_size=32, val_fraction=0.25, test_fraction=0.15, seed=5)
    dm.setup()
    prompts = {s: set(dm.splits[s]["prompt_id"].to_list()) for s in ("train", "val", "test")}
    assert all(prompts.values())
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"]) and not (
        prompts["val"] & prompts["test"])
    # pairs (and items) follow their prompt
    items = pl.read_parquet(dataset["items"])
    item_prompt = dict(zip(items["item_id"], items["prompt_id"]))
    for s, df in dm.splits.items():
        assert {item_prompt[i] for i in df["item_a"].to_list() + df["item_b"].to_list()} <= prompts[s]
    # another seed, another split; the same seed, the same split
    dm2 = PreferenceDataModule(dataset["items"], dataset["pairs"], dataset["preferences"], stage="global",
                               modes=["geometry"], image_size=32, val_fraction=0.25, test_fraction=0.15, seed=5)
    dm2.setup()
    assert dm2.prompt_split == dm.prompt_split
    # weights: 1/(examples of the prompt) -> each prompt's weights sum to 1
    sums = dm.splits["train"].group_by("prompt_id").agg(pl.col("weight").sum())["weight"]
    assert sums.to_list() == pytest.approx([1.0] * len(sums))
    # one example: views of both items at the loader's size, prompt, soft target
    ex = dm.dataset("train")[0]
    assert ex["views_a"].shape == (2, 3, 32, 32) and ex["views_a"].dtype == torch.uint8
    assert ex["target"] in (0.0, 0.5, 1.0) and ex["prompt"].startswith("a ")


@pytest.mark.slow
def test_augmentation_mirrors_and_shifts_training_views_only(dataset):
    import numpy as np

    from rewardkit.train.augment import Augment, translate

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    y = translate(x, 1, -1)  # right 1, up 1: the uncovered column/row takes the corner colour, nothing wraps
    assert torch.equal(y[:, :, :3, 1:], x[:, :, 1:, :3])
    assert torch.equal(y[:, :, 3, :], x[:, :, :1, :1].squeeze(-1).expand(2, 3, 4))
    assert torch.equal(Augment(hflip=1.0)(x, np.random.default_rng(0)), x.flip(-1))
    assert torch.equal(Augment()(x, np.random.default_rng(0)), x) and not Augment().active
    with pytest.raises(ValueError, match="hflip"):
        Augment(hflip=1.5)
    dm = PreferenceDataModule(dataset["items"], dataset["pairs"], dataset["preferences"], stage="global",
                              modes=["geometry"], image_size=32, val_fraction=0.25, seed=5,
                              augment=Augment(hflip=1.0, shift=0))
    dm.setup()
    plain = dm._loader(dm.splits["train"].row(0, named=True)["dir_a"])
    assert torch.equal(dm.dataset("train")[0]["views_a"], plain.flip(-1))  # the cached views stay unflipped
    # the draws are a function of (seed, epoch, index): the training sampler passes the epoch along
    shifted = PreferenceDataModule(dataset["items"], dataset["pairs"], dataset["preferences"], stage="global",
                                   modes=["geometry"], image_size=32, val_fraction=0.25, seed=5,
                                   augment=Augment(hflip=0.5, shift=3))
    ds = shifted.dataset("train")
    assert torch.equal(ds[(2, 0)]["views_a"], ds[(2, 0)]["views_a"])
    assert any(not torch.equal(ds[(e, 0)]["views_a"], ds[(0, 0)]["views_a"]) for e in range(1, 6))
    sampler = shifted.train_dataloader().sampler
    sampler.set_epoch(3)
    assert all(isinstance(k, tuple) and k[0] == 3 for k in sampler)
    assert dm.dataset("val").augment is None
    val0 = dm.splits["val"].row(0, named=True)["dir_a"]
    assert torch.equal(dm.dataset("val")[0]["views_a"], dm._loader(val0))


@pytest.mark.slow
def test_examples_keep_both_bad_out_of_training(dataset):
    ex, summary = build_examples(dataset["items"], dataset["pairs"], dataset["preferences"], "local")
    assert summary["labels"]["both_bad"] == 1 and summary["both_bad_excluded"] == 1
    assert "both_bad" not in ex["label"].to_list()
    assert summary["examples"] == summary["preference_rows"] - 1
    # relative render_dir values resolve against the items table's folder
    assert all(Path(p).is_dir() for p in ex["dir_a"].to_list()[:5])
    agg, _ = build_examples(dataset["items"], dataset["pairs"], dataset["preferences"], "local", aggregate_annotators=True)
    assert agg.height == agg["pair_id"].n_unique()


@pytest.mark.slow
def test_bad_tables_are_named(dataset, tmp_path):
    prefs = pl.read_parquet(dataset["preferences"])
    bad = prefs.with_columns(pl.lit("nope").alias("pair_id"))
    write_table(bad, tmp_path / "prefs.parquet", "preferences")
    with pytest.raises(TableError, match="pairs not in the pairs table"):
        build_examples(dataset["items"], dataset["pairs"], tmp_path / "prefs.parquet", "global")
    dm = PreferenceDataModule(dataset["items"], dataset["pairs"], prefs.filter(pl.col("label") == "both_bad"),
                              stage="global", modes=["geometry"], image_size=32)
    with pytest.raises(TableError, match="no usable 'global' preferences"):
        dm.setup()


# ------------------------------------------------------------------------------------------------- #
# config
def test_train_config_overrides_and_files(tmp_path):
    d = apply_overrides({}, ["lr=3e-4", "model.backbone.name=ViT-B-32", "model.modes=[geometry, normal]",
                             "views=[0,2]", "resume=null", "devices=2", "model.unlocked_image_blocks=4"])
    cfg = TrainConfig.from_dict(d)
    assert cfg.lr == 3e-4 and cfg.model.backbone.name == "ViT-B-32" and cfg.model.modes == ["geometry", "normal"]
    assert cfg.views == [0, 2] and cfg.resume is None and cfg.devices == 2 and cfg.model.unlocked_image_blocks == 4
    with pytest.raises(ValueError, match="unknown config key 'model.backbone.nme'"):
        apply_overrides({}, ["model.backbone.nme=x"])
    with pytest.raises(ValueError, match="not key=value"):
        apply_overrides({}, ["lr"])
    # the stage picks the default render modes
    assert TrainConfig(stage="local").model.modes == ["rgb"]
    assert TrainConfig.from_dict({"stage": "local", "model": {"backbone": {"name": "rk-tiny"}}}).model.stage == "local"
    # YAML file < --set < fixed fields
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"stage": "global", "lr": 0.1, "model": {"view_dropout": 0.2}}))
    cfg = load_train_config(tmp_path / "c.yaml", ["lr=0.5"], stage="local")
    assert cfg.stage == "local" and cfg.lr == 0.5 and cfg.model.view_dropout == 0.2 and cfg.model.modes == ["rgb"]
    (tmp_path / "c.json").write_text(json.dumps({"max_epochs": 3}))
    assert load_train_config(tmp_path / "c.json").max_epochs == 3
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"nope": 1})
    # round trip
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).to_dict() == cfg.to_dict()


# ------------------------------------------------------------------------------------------------- #
# learnability on rendered pairs
@pytest.mark.slow
def test_global_stage_learns_smooth_over_noisy_geometry(dataset, tmp_path):
    cfg = config(dataset, tmp_path, "global", max_epochs=5, tensorboard=True, model={"view_dropout": 0.25})
    result = train(cfg)
    m = result.metrics
    assert m["modes"] == ["geometry"]
    assert m["val"]["pairwise_accuracy"] >= 0.9, m["val"]
    assert m["val"]["n_decided"] >= 40
    # the global model never sees texture: on pairs differing only in texture it is exactly at chance
    dis = m["disentanglement"]
    assert dis["differs_in"] == "texture" and dis["labels_from_question"] == "local" and dis["n_pairs"] > 0
    assert dis["accuracy"] == pytest.approx(0.5)
    # no prompt leakage in the run's split
    split = m["data"]["split"]
    assert split["train"]["prompts"] + split["val"]["prompts"] == 48
    # outputs
    out = Path(cfg.out_dir)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["val"]["pairwise_accuracy"] == m["val"]["pairwise_accuracy"]
    for key in ("tie_band_accuracy", "tie_threshold", "bt_loss", "ece", "ece_calibrated", "temperature"):
        assert key in on_disk["val"]
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert (out / "logs" / "csv" / "version_0" / "metrics.csv").exists()
    assert list((out / "logs" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "last.ckpt").exists()
    # the exported weights are the best epoch by the monitor (first maximum of val/pairwise_accuracy),
    # recorded for the learning-curve plots
    import polars as pl

    log = pl.read_csv(out / "logs" / "csv" / "version_0" / "metrics.csv").select("epoch", "step", "val/pairwise_accuracy").drop_nulls()
    best = log.row(int(log["val/pairwise_accuracy"].arg_max()), named=True)
    assert m["weights"] == "best" and m["selected_epoch"] == best["epoch"] and on_disk["selected_epoch"] == best["epoch"]
    assert f"best-{best['epoch']:03d}-" in Path(m["checkpoint"]).name
    assert m["selected_step"] == int(Path(m["checkpoint"]).stem.split("-")[2])  # best-<epoch>-<step>.ckpt
    # the exported model reproduces the validation deltas
    model = StageRewardModel.from_pretrained(out / "model")
    d1, _t1, _ = predict_deltas(result.module.model, result.datamodule.val_dataloader())
    d2, _t2, _ = predict_deltas(model, result.datamodule.val_dataloader())
    assert torch.allclose(torch.as_tensor(d1), torch.as_tensor(d2), atol=1e-5)


@pytest.mark.slow
def test_local_stage_learns_the_prompted_colour_through_the_cli(dataset, tmp_path):
    from rewardkit.cli import main

    d = json.loads(json.dumps(FAST))
    d.update(items=str(dataset["items"]), pairs=str(dataset["pairs"]), preferences=str(dataset["preferences"]),
             probes=str(dataset["probes"]))
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(d))
    out = tmp_path / "local"
    # the tiny text tower starts random, so it must learn the colour words: unlock it
    res = CliRunner().invoke(main, ["train", "--stage", "local", "--config", str(tmp_path / "train.yaml"),
                                    "--set", "max_epochs=5", "--set", "model.lock_text=false", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "stage local (rgb)" in res.output and "disentanglement" in res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["stage"] == "local" and m["modes"] == ["rgb"]
    assert m["val"]["pairwise_accuracy"] >= 0.9, m["val"]
    assert m["disentanglement"]["differs_in"] == "geometry" and m["disentanglement"]["n_pairs"] > 0
    assert m["disentanglement"]["accuracy"] is not None
    assert m["data"]["both_bad_excluded"] == 1
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["stage"] == "local" and cfg["training"]["metrics"]["val"]["pairwise_accuracy"] == m["val"]["pairwise_accuracy"]


def test_cli_reports_config_errors(tmp_path):
    from rewardkit.cli import main

    res = CliRunner().invoke(main, ["train", "--stage", "global", "--set", "model.modes=[rgb]", "--print-config"])
    assert res.exit_code != 0 and "must not see rgb" in res.output
    res = CliRunner().invoke(main, ["train", "--stage", "local", "--set", "lr=0.01", "--print-config"])
    assert res.exit_code == 0 and json.loads(res.output)["lr"] == 0.01
    res = CliRunner().invoke(main, ["train", "--stage", "global", "--set", f"items={tmp_path}/none.parquet",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not found" in res.output  # a missing input table: a configuration error


# ------------------------------------------------------------------------------------------------- #
# resume
class _StopAfterEpoch(L.Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.slow
def test_resume_from_checkpoint_continues_identically(dataset, tmp_path):
    common = dict(max_epochs=2, use_best_checkpoint=False, export=False, probes=None, deterministic=True,
                  model={"view_dropout": 0.3}, augment_hflip=0.5, augment_shift=2)  # augmentation replays too
    straight = train(config(dataset, tmp_path / "a", "global", **common))
    # the same run, stopped after one epoch (as if killed), then resumed from last.ckpt
    part = train(config(dataset, tmp_path / "b", "global", **common), callbacks=[_StopAfterEpoch(1)])
    assert part.metrics["epochs"] == 1 or part.metrics["global_step"] < straight.metrics["global_step"]
    resumed = train(config(dataset, tmp_path / "b", "global", resume="auto", **common))
    assert resumed.metrics["resumed_from"] and resumed.metrics["resumed_from"].endswith("last.ckpt")
    assert resumed.metrics["global_step"] == straight.metrics["global_step"]
    sa, sb = straight.module.state_dict(), resumed.module.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6, rtol=0), k
    # and the logged training loss of the second epoch is the same
    def epoch_loss(out: Path, epoch: int) -> float:
        return read_metrics_log(out).filter(pl.col("epoch") == epoch)["train/loss_epoch"].drop_nulls()[-1]

    assert epoch_loss(straight.out_dir, 0) == pytest.approx(epoch_loss(resumed.out_dir, 0), abs=1e-6)
    assert epoch_loss(straight.out_dir, 1) == pytest.approx(epoch_loss(resumed.out_dir, 1), abs=1e-6)
    # the resumed run logged into a new version and kept the first run's log
    assert [p.parent.name for p in metrics_csv_paths(resumed.out_dir)] == ["version_0", "version_1"]
    assert straight.metrics["val"]["pairwise_accuracy"] == resumed.metrics["val"]["pairwise_accuracy"]
    # a checkpoint gives back the stage model without Lightning
    model = model_from_checkpoint(resumed.last_checkpoint)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sb[f"model.{k}"]), k


@pytest.mark.slow
def test_resume_auto_falls_back_from_a_torn_last_checkpoint(dataset, tmp_path):
    """A truncated last.ckpt (killed mid-write, disk full) does not abort resume=auto: the newest checkpoint
    that loads (here best-*.ckpt of the same epoch) is used, with a warning naming the torn file; the run
    finishes as if nothing happened. With no loadable checkpoint at all the error names the files."""
    common = dict(max_epochs=2, use_best_checkpoint=False, export=False, probes=None, deterministic=True,
                  save_top_k=1)
    straight = train(config(dataset, tmp_path / "a", "global", **common))
    train(config(dataset, tmp_path / "b", "global", **common), callbacks=[_StopAfterEpoch(1)])
    ckpts = Path(tmp_path / "b" / "global" / "checkpoints")
    last = ckpts / "last.ckpt"
    best = [p for p in ckpts.glob("best-*.ckpt")]
    assert last.exists() and len(best) == 1
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # torn
    with pytest.warns(RuntimeWarning, match="last.ckpt: cannot load checkpoint"):
        resumed = train(config(dataset, tmp_path / "b", "global", resume="auto", **common))
    assert resumed.metrics["resumed_from"] == str(best[0])
    assert resumed.metrics["global_step"] == straight.metrics["global_step"]
    sa, sb = straight.module.state_dict(), resumed.module.state_dict()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6, rtol=0), k
    # nothing loadable: a clear error naming the files, not a traceback from deep inside torch
    for p in ckpts.glob("*.ckpt"):
        p.write_bytes(b"\x00" * 64)
    with pytest.raises(RuntimeError, match="no loadable checkpoint in .*last.ckpt"):
        train(config(dataset, tmp_path / "b", "global", resume="auto", **common))
