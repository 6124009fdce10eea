"""Reward-model ensembles (issue 18, item 2): a real small global model trained on rendered primitives, an
ensemble of reward heads fitted on its frozen towers, exported as one ``stage-ensemble`` scorer whose std
reaches score_meshes, ``rewardkit score --json``, the HTTP service, the TRL / verl adapters and the Hi-GRPO
reward terms (TermValues)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from helpers.models import make_preference_dataset
from helpers.scoring import running

FAST = {"model": {"backbone": {"name": "rk-tiny", "image_size": 32}}, "image_size": 32, "batch_size": 32,
        "lr": 2e-3, "val_fraction": 0.25, "num_threads": 1, "progress_bar": False, "tensorboard": False,
        "log_every_n_steps": 5, "resume": None}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset paths, trained global model, its train config dict, run dir)."""
    from rewardkit.models import StageRewardModel
    from rewardkit.train import TrainConfig, train

    root = tmp_path_factory.mktemp("rk-ens")
    ds = make_preference_dataset(root / "data", n_prompts=24, size=32)
    d = dict(FAST, stage="global", items=str(ds["items"]), pairs=str(ds["pairs"]),
             preferences=str(ds["preferences"]), out_dir=str(root / "run"), max_epochs=4)
    threads = torch.get_num_threads()
    try:
        train(TrainConfig.from_dict(d))
    finally:
        torch.set_num_threads(threads)
    model = StageRewardModel.from_pretrained(root / "run" / "model")
    tc = json.loads((root / "run" / "train_config.json").read_text())
    return ds, model, tc, root


@pytest.fixture(scope="module")
def ensemble(trained):
    from rewardkit.train.ensemble import EnsembleConfig, train_ensemble

    _, model, tc, _ = trained
    t0 = time.perf_counter()
    ens, report = train_ensemble(model, tc, EnsembleConfig(members=5, seed=3))
    report["wall"] = time.perf_counter() - t0
    return ens, report


@pytest.fixture(scope="module")
def scorer_dir(ensemble, trained):
    from rewardkit.scoring import EnsembleScorer, Scorer, ScorerSet

    ens, report = ensemble
    _, model, _, root = trained
    out = root / "scorers"
    ScorerSet({"global": EnsembleScorer(ens, camera="0:20,180:20", render_size=32, metrics={"ensemble": report}),
               "plain": Scorer(model, camera="0:20,180:20", render_size=32)}).save_pretrained(out)
    return out


def _views(ds, n=None):
    import polars as pl

    from rewardkit.train.data import ViewCache, resolve_render_dir

    items = pl.read_parquet(ds["items"])
    if n is not None:
        items = items.head(n)
    vc = ViewCache(["geometry"], 32)
    dirs = [resolve_render_dir(d, None, ds["items"]) for d in items["render_dir"]]
    return torch.stack([vc(d) for d in dirs]), items["prompt"].to_list()


@pytest.mark.slow
def test_members_are_trained_heads_on_the_model_and_member_zero_is_the_model(trained, ensemble):
    ds, model, _, _ = trained
    ens, report = ensemble
    assert ens.members == 5 and report["members"] == 5
    assert report["train_pairs"] > 50 and report["val_pairs"] > 10
    # each member ranks the validation pairs (smooth over noisy geometry) well; so does their mean
    assert min(report["val_member_accuracy"]) >= 0.85, report
    assert report["val_ensemble_accuracy"] >= 0.9, report
    assert report["wall"] < 60  # heads on cached tower features: seconds, not a training run
    views, prompts = _views(ds, 16)
    with torch.no_grad():
        out = ens(views, prompts, return_details=True)
        base = model(views, prompts)
    assert out["rewards"].shape == (5, 16) and out["std"].shape == (16,)
    torch.testing.assert_close(out["rewards"][0], base)  # member 0: the trained model, offset 0
    torch.testing.assert_close(out["reward"], out["rewards"].mean(0))
    assert float(ens.offsets[0]) == 0.0
    # the heads differ from the model and from each other (bootstrap resamples, own seeds)
    assert float(out["std"].min()) > 0
    assert len({round(float(x), 5) for x in out["rewards"][:, 0]}) == 5


@pytest.mark.slow
def test_offsets_put_every_member_at_the_models_level_on_the_training_candidates(trained, ensemble):
    ds, _model, _, _ = trained
    ens, _ = ensemble
    views, prompts = _views(ds)
    with torch.no_grad():
        r = ens(views, prompts, return_details=True)["rewards"]
    means = r.mean(1)
    spread_of_means = float((means - means[0]).abs().max())
    assert spread_of_means < 0.5 * float(r.std(1).mean()), (means, r.std(1))


@pytest.mark.slow
def test_std_is_larger_off_the_training_data(trained, ensemble):
    """Views unlike every training render (uniform noise) get a larger spread than the training candidates."""
    ds, _, _, _ = trained
    ens, _ = ensemble
    views, prompts = _views(ds)
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(views.shape, generator=g) * 255).to(torch.uint8)
    with torch.no_grad():
        std_in = ens(views, prompts, return_details=True)["std"].mean()
        std_out = ens(noise, prompts, return_details=True)["std"].mean()
    assert float(std_out) > 1.5 * float(std_in), (float(std_in), float(std_out))


@pytest.mark.slow
def test_bootstrap_and_seed_are_deterministic(trained):
    from rewardkit.train.ensemble import EnsembleConfig, train_ensemble

    ds, model, tc, _ = trained
    views, prompts = _views(ds, 8)
    a, _ = train_ensemble(model, tc, EnsembleConfig(members=3, seed=7, epochs=5))
    b, _ = train_ensemble(model, tc, EnsembleConfig(members=3, seed=7, epochs=5))
    c, _ = train_ensemble(model, tc, EnsembleConfig(members=3, seed=8, epochs=5))
    with torch.no_grad():
        ra, rb, rc = (e(views, prompts, return_details=True)["rewards"] for e in (a, b, c))
    torch.testing.assert_close(ra, rb)
    assert not torch.allclose(ra[1:], rc[1:])
    with pytest.raises(ValueError, match="members"):
        EnsembleConfig(members=0)


@pytest.mark.slow
def test_saved_and_loaded_as_one_scorer_with_the_same_scores_and_std(scorer_dir, ensemble, trained):
    from rewardkit.scoring import EnsembleScorer, ScorerError, load_scorer

    ds, _, _, _ = trained
    ens, _ = ensemble
    cfg = json.loads((scorer_dir / "global" / "config.json").read_text())
    assert cfg["kind"] == "stage-ensemble" and cfg["architecture"]["members"] == 5
    assert cfg["format_version"] and cfg["rewardkit_version"]
    loaded = load_scorer(scorer_dir, device="cpu")
    g = loaded["global"]
    assert isinstance(g, EnsembleScorer) and g.members == 5 and g.describe()["members"] == 5
    views, prompts = _views(ds, 6)
    out = g.score_views({"geometry": views}, prompts)
    with torch.no_grad():
        ref = ens(views, prompts, return_details=True)
    torch.testing.assert_close(out.scores, ref["reward"])
    torch.testing.assert_close(out.std, ref["std"])
    assert out.members.shape == (5, 6)
    assert loaded["plain"].score_views({"geometry": views}, prompts).std is None
    # a config that names a different number of members than the weights hold is refused, naming the file
    bad = scorer_dir.parent / "bad"
    import shutil

    shutil.copytree(scorer_dir / "global", bad)
    cfg["architecture"]["members"] = 4
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ScorerError, match="does not match the architecture"):
        load_scorer(bad)
    cfg["architecture"]["architecture"] = "Nope"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ScorerError, match="unknown architecture"):
        load_scorer(bad)


def _meshes(tmp_path):
    import trimesh

    paths = []
    for i, m in enumerate([trimesh.creation.icosphere(subdivisions=2, radius=0.5),
                           trimesh.creation.box(extents=(0.8, 0.8, 0.8))]):
        p = tmp_path / f"m{i}.glb"
        m.export(p)
        paths.append(p)
    return paths


@pytest.mark.slow
def test_std_through_score_meshes_the_cli_json_and_the_rl_adapters(scorer_dir, tmp_path):
    from click.testing import CliRunner

    from rewardkit.cli import main as cli
    from rewardkit.rl.rewards import TermValues
    from rewardkit.rl.scorer_adapters import scorer_reward
    from rewardkit.scoring import load_scorer, score_meshes
    from rewardkit.scoring.adapters import clear_cache, compute_score_batch, trl_reward_function

    meshes = _meshes(tmp_path)
    scorers = load_scorer(scorer_dir, device="cpu")
    res = score_meshes(meshes, "a red sphere", scorers)
    assert all(r.ok for r in res)
    assert set(res[0].std) == {"global"} and res[0].std["global"] > 0
    d = res[0].to_dict()
    assert d["std"] == {"global": res[0].std["global"]}
    # the CLI's --json carries the std
    out = CliRunner().invoke(cli, ["score", *map(str, meshes), "--prompt", "a red sphere", "--scorer",
                                   str(scorer_dir), "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["results"][0]["std"]["global"] == pytest.approx(res[0].std["global"], rel=1e-5)
    # Hi-GRPO term: TermValues (mean, std) from an ensemble; a plain list from a plain scorer
    fn = scorer_reward(str(scorer_dir), stage="global", device="cpu")
    tv = fn([str(m) for m in meshes] + [None], ["a red sphere"] * 3)
    assert isinstance(tv, TermValues)
    assert tv.mean[0] == pytest.approx(res[0].scores["global"], rel=1e-5)
    assert tv.std[0] == pytest.approx(res[0].std["global"], rel=1e-5) and tv.mean[2] is None and tv.std[2] is None
    plain = scorer_reward(str(scorer_dir), stage="plain", device="cpu")([str(meshes[0])], ["a red sphere"])
    assert isinstance(plain, list)
    # TRL: the std as an extra column; verl: rewardkit_global_std on every dict
    logged = {}
    reward = trl_reward_function(str(scorer_dir), stage="global", mesh_key="mesh", device="cpu", read_paths=True)
    r = reward(["a red sphere"] * 2, ["", ""], mesh=[str(m) for m in meshes],
               log_extra=lambda k, v: logged.__setitem__(k, v))
    assert r[0] == pytest.approx(res[0].scores["global"], rel=1e-5)
    assert logged["rewardkit/global_std"][0] == pytest.approx(res[0].std["global"], rel=1e-5)
    assert reward.last_std[1] == pytest.approx(res[1].std["global"], rel=1e-5)
    clear_cache()
    rows = compute_score_batch(["x", "x"], ["", "not a mesh"], ["a red sphere"] * 2,
                               [{"mesh_path": str(meshes[0])}, None], scorer_dir=str(scorer_dir), stage="global",
                               device="cpu")
    assert rows[0]["rewardkit_global_std"] == pytest.approx(res[0].std["global"], rel=1e-5)
    assert set(rows[0]) == set(rows[1]) and rows[1]["rewardkit_failed"] == 1.0
    clear_cache()


@pytest.mark.slow
def test_std_in_the_http_service_answers(scorer_dir, tmp_path):
    from rewardkit.rl.rewards import TermValues
    from rewardkit.rl.scorer_adapters import scorer_reward
    from rewardkit.scoring import load_scorer, score_meshes
    from rewardkit.scoring.client import ScorerClient
    from rewardkit.scoring.service import create_app

    scorers = load_scorer(scorer_dir, device="cpu")
    meshes = _meshes(tmp_path)
    ref = score_meshes(meshes[:1], "a red sphere", scorers)[0]
    with running(create_app(scorers, max_batch=4, batch_window_ms=5.0)) as (url, _):
        client = ScorerClient(url)
        assert client.health()["scorers"]["global"]["members"] == 5
        got = client.score_mesh(meshes[0], "a red sphere")
        assert got["std"]["global"] == pytest.approx(ref.std["global"], rel=1e-4)
        assert "plain" in got["scores"] and "plain" not in got["std"]
        from rewardkit.scoring.api import render_views

        views = render_views(meshes[0], scorers["global"])
        got = client.score_views("a red sphere", views, scorers=["global"])
        assert got["std"]["global"] == pytest.approx(ref.std["global"], rel=1e-4)
        tv = scorer_reward(url=url, stage="global")([str(meshes[0])], ["a red sphere"])
        assert isinstance(tv, TermValues) and tv.std[0] == pytest.approx(ref.std["global"], rel=1e-4)


@pytest.mark.slow
def test_uncertainty_penalty_term_uses_the_ensemble_std(scorer_dir, tmp_path):
    from rewardkit.rl.rewards import build_step_reward

    meshes = [str(m) for m in _meshes(tmp_path)]
    spec = {"name": "g", "scorer": str(scorer_dir), "args": {"stage": "global", "device": "cpu"}}
    plain = build_step_reward([spec])(meshes, ["a red sphere"] * 2)
    pen = build_step_reward([dict(spec, uncertainty_penalty=2.0)])(meshes, ["a red sphere"] * 2)
    std = plain.stds["g"]
    assert np.all(std > 0)
    np.testing.assert_allclose(pen.total, plain.total - 2.0 * std, rtol=1e-5)


@pytest.mark.slow
def test_annotate_select_picks_uncertain_unlabelled_pairs_with_the_real_ensemble(scorer_dir, trained, tmp_path):
    import polars as pl
    from click.testing import CliRunner

    from rewardkit.cli import main as cli
    from rewardkit.data.tables import read_pairs

    ds, _, _, _ = trained
    labelled = read_pairs(ds["pairs"]).head(40)
    labelled.write_parquet(tmp_path / "labelled.parquet")
    out = tmp_path / "next.parquet"
    args = ["annotate", "select", "--scorer", str(scorer_dir), "--stage", "global", "--items", str(ds["items"]),
            "--labelled", str(tmp_path / "labelled.parquet"), "--preferences", str(ds["preferences"]),
            "--k", "12", "--per-prompt-cap", "2", "--seed", "1", "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "5 member(s)" in r.output and "from 40 labelled" in r.output or "labelled)" in r.output
    sel = read_pairs(out)
    scores = pl.read_csv(out.with_suffix(".csv"))
    assert sel.height == 12 and not set(sel["pair_id"]) & set(labelled["pair_id"])
    assert sel.group_by("prompt_id").len()["len"].max() <= 2
    assert set(scores["selected_by"]) == {"random", "uncertainty", "disagreement"}
    # a pairs table `annotate push --pairs` reads as is
    assert sel.columns[:4] == ["pair_id", "prompt_id", "item_a", "item_b"]
    r2 = CliRunner().invoke(cli, args[:-1] + [str(tmp_path / "again.parquet")])
    assert r2.exit_code == 0 and read_pairs(tmp_path / "again.parquet").equals(sel)


@pytest.mark.slow
def test_rewardkit_export_writes_a_training_run_as_a_scorer_set_ensembles_included(trained, tmp_path):
    """`rewardkit export` (what the pipeline's export stage calls): the run's model with the camera protocol
    and render config of the renders it was trained on; --members N an ensemble; bad input is exit 2."""
    import polars as pl
    from click.testing import CliRunner

    from rewardkit.cli import main
    from rewardkit.render import read_meta
    from rewardkit.scoring import EnsembleScorer, Scorer, load_scorer
    from rewardkit.train.data import resolve_render_dir

    ds, model, _, root = trained
    meta = read_meta(resolve_render_dir(pl.read_parquet(ds["items"])["render_dir"][0], None, ds["items"]))
    res = CliRunner().invoke(main, ["export", "--run", f"global={root / 'run'}", "--out", str(tmp_path / "ens"),
                                    "--members", "3", "--name", "t", "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    g = load_scorer(tmp_path / "ens", device="cpu")["global"]
    assert isinstance(g, EnsembleScorer) and g.members == 3 and g.name == "t-global"
    cfg = json.loads((tmp_path / "ens" / "global" / "config.json").read_text())
    assert cfg["camera_protocol"]["azimuths"] == meta["protocol"]["azimuths"]
    assert cfg["camera_protocol"]["size"] == meta["protocol"]["size"]
    assert cfg["render_config"] == meta["render_config"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["members"] == 3 and len(report["global"]["val_member_accuracy"]) == 3
    res = CliRunner().invoke(main, ["export", "--run", f"global={root / 'run'}", "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    plain = load_scorer(tmp_path / "one", device="cpu")["global"]
    assert type(plain) is Scorer
    views, prompts = _views(ds, 4)
    with torch.no_grad():
        torch.testing.assert_close(plain.score_views({"geometry": views}, prompts).scores, model.eval()(views, prompts))
    for args, words in ((["--run", f"middle={root / 'run'}"], "STAGE=DIR"),
                        (["--run", f"global={tmp_path}"], "metrics.json")):
        res = CliRunner().invoke(main, ["export", *args, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and words in res.output, res.output
