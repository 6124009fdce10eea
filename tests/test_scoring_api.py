"""The batched Python scoring API and the RL reward adapters (TRL, verl) on a local scorer set."""

from __future__ import annotations

import pytest
import torch
import trimesh

from helpers.scoring import RENDER_SIZE, colored_box, mesh_files, scorer_set_dir

from rewardkit.scoring import ScoringTimings, load_scorer, render_views, score_meshes, score_views
from rewardkit.scoring.adapters import compute_score, compute_score_batch, trl_reward_function


@pytest.fixture(scope="module")
def scorers():
    return load_scorer(scorer_set_dir())


def test_score_meshes_paths_objects_and_errors(scorers):
    files = mesh_files()
    meshes = [files["red_box"], files["broken"], colored_box((30, 200, 30)), files["cone"], "/does/not/exist.glb"]
    timings = ScoringTimings()
    res = score_meshes(meshes, "a red box", scorers, batch_size=2, per_view=True, timings=timings)
    assert [r.ok for r in res] == [True, False, True, True, False]
    assert "broken.glb" in res[1].error and "not found" in res[4].error
    for r in (res[0], res[2], res[3]):
        assert set(r.scores) == {"global", "local"}
        assert all(isinstance(x, float) for x in r.scores.values())
        assert len(r.per_view["global"]) == 4 and len(r.per_view["local"]) == 4
    assert res[2].mesh == "<mesh 2>"
    assert timings.n_meshes == 5 and timings.render > 0 and timings.forward > 0
    assert timings.n_forwards == 4  # 3 good meshes in batches of 2 -> 2 batches x 2 scorers
    with pytest.raises(RuntimeError, match="broken.glb"):
        score_meshes([files["broken"]], "x", scorers, on_error="raise")


def test_deterministic_and_batch_invariant(scorers):
    files = mesh_files()
    meshes = [files["red_box"], files["blue_sphere"]]
    prompts = ["a red box", "a blue ball"]
    a = score_meshes(meshes, prompts, scorers, batch_size=8)
    b = score_meshes(meshes, prompts, scorers, batch_size=8)
    assert [r.scores for r in a] == [r.scores for r in b]  # bitwise repeatable
    c = score_meshes(meshes, prompts, scorers, batch_size=1, prefetch=False)
    for x, y in zip(a, c):
        for k in x.scores:
            assert x.scores[k] == pytest.approx(y.scores[k], abs=1e-5)
    # reversed order: each mesh keeps its own score
    d = scorers.score_meshes(meshes[::-1], prompts[::-1])
    for x, y in zip(a, d[::-1]):
        for k in x.scores:
            assert x.scores[k] == pytest.approx(y.scores[k], abs=1e-5)


def test_each_mesh_rendered_once_for_both_stages(scorers, monkeypatch):
    from rewardkit.render import Renderer

    calls = []
    original = Renderer.render

    def counting(self, mesh, protocol="orbit6", modes=("rgb",)):
        calls.append(tuple(modes))
        return original(self, mesh, protocol, modes)

    monkeypatch.setattr(Renderer, "render", counting)
    files = mesh_files()
    score_meshes([files["red_box"], files["cone"]], "x", scorers, prefetch=False)
    assert len(calls) == 2
    assert all(set(m) == {"geometry", "rgb"} for m in calls)


def test_mesh_path_equals_view_path(scorers):
    mesh = mesh_files()["blue_sphere"]
    views = render_views(mesh, scorers)
    assert views["rgb"].shape == (4, 3, RENDER_SIZE, RENDER_SIZE) and views["rgb"].dtype == torch.uint8
    direct = score_views({m: v.unsqueeze(0) for m, v in views.items()}, ["a blue ball"], scorers)
    via_mesh = score_meshes([mesh], "a blue ball", scorers)[0]
    for k in ("global", "local"):
        assert float(direct[k].scores[0]) == pytest.approx(via_mesh.scores[k], abs=1e-6)


def test_global_score_ignores_texture(scorers):
    # same geometry, different colour: geometry renders are identical, so the global score is too
    red, green = colored_box((220, 20, 20)), colored_box((20, 220, 20))
    r, g = score_meshes([red, green], "a red box", scorers)
    assert r.scores["global"] == pytest.approx(g.scores["global"], abs=1e-6)
    assert r.scores["local"] != pytest.approx(g.scores["local"], abs=1e-6)


def test_no_grad_by_default_and_differentiable_path(scorers):
    views = torch.rand(2, 4, 3, RENDER_SIZE, RENDER_SIZE)
    out = scorers["local"].score_views(views, ["a", "b"])
    assert not out.scores.requires_grad
    v = views.clone().requires_grad_(True)
    out = score_views({"rgb": v, "geometry": v}, ["a", "b"], scorers, grad=True)
    (out["local"].scores.sum() + out["global"].scores.sum()).backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    # scorer modules stay in eval mode and frozen state is untouched
    assert not scorers["local"].module.training


def test_trl_reward_function_local(scorers):
    files = mesh_files()
    reward = trl_reward_function(scorers, stage="local", read_paths=True)
    assert reward.__name__ == "rewardkit_local"
    logged = {}
    prompts = ["a red box", [{"role": "user", "content": "a cone"}], "a ball"]
    completions = [str(files["red_box"]), [{"role": "assistant", "content": str(files["cone"])}], str(files["broken"])]
    out = reward(prompts, completions, log_extra=lambda k, v: logged.setdefault(k, v))
    expected = score_meshes([files["red_box"], files["cone"]], ["a red box", "a cone"], scorers)
    assert out[0] == pytest.approx(expected[0].scores["local"], abs=1e-5)
    assert out[1] == pytest.approx(expected[1].scores["local"], abs=1e-5)
    assert out[2] is None  # TRL: not applicable
    assert set(logged) == {"rewardkit/local"}  # stage="local": only the local scorer runs
    both = trl_reward_function(scorers, weights={"global": 1.0, "local": 0.5}, mesh_key="mesh_path", failure_score=-1.0)
    out = both(["a red box", "x"], ["ignored", "ignored"], mesh_path=[files["red_box"], files["broken"]])
    e = expected[0].scores
    assert out[0] == pytest.approx(e["global"] + 0.5 * e["local"], abs=1e-5)
    assert out[1] == -1.0


def test_verl_compute_score(scorers, monkeypatch):
    from pathlib import Path

    from rewardkit.scoring import adapters

    files = mesh_files()
    d = str(scorer_set_dir())
    # the adapter caches one backend per (scorer_dir, url, device); seed it with the already-loaded set
    cache = {(str(Path(d).resolve()), None, "auto", None): adapters.LocalBackend(scorers)}
    monkeypatch.setattr(adapters, "_BACKENDS", cache)
    r = compute_score("rewardkit", str(files["red_box"]), "a red box", {"split": "train"}, scorer_dir=d,
                      read_paths=True)
    e = score_meshes([files["red_box"]], "a red box", scorers)[0].scores
    assert r["score"] == pytest.approx(e["global"] + e["local"], abs=1e-5)
    assert r["rewardkit_global"] == pytest.approx(e["global"], abs=1e-5) and r["rewardkit_failed"] == 0.0
    f = compute_score("rewardkit", "whatever", None, {"prompt": "a red box", "mesh_path": str(files["red_box"])},
                      scorer_dir=d, stage="global", return_dict=False)
    assert f == pytest.approx(e["global"], abs=1e-5)
    bad = compute_score("rewardkit", str(files["broken"]), "x", scorer_dir=d, read_paths=True)
    assert bad["score"] == 0.0 and bad["rewardkit_failed"] == 1.0
    batch = compute_score_batch(["a", "b"], [str(files["red_box"]), str(files["cone"])], ["a red box", "a cone"],
                                scorer_dir=d, stage="local", return_dict=False, read_paths=True)
    assert batch[0] == pytest.approx(e["local"], abs=1e-5) and isinstance(batch[1], float)
    monkeypatch.delenv("REWARDKIT_SCORER", raising=False)
    monkeypatch.delenv("REWARDKIT_SCORER_URL", raising=False)
    with pytest.raises(ValueError, match="scorer_dir"):
        compute_score("x", "y", "z")


def test_trimesh_scene_input(scorers):
    scene = trimesh.Scene([colored_box(), trimesh.creation.icosphere(radius=0.2)])
    (r,) = score_meshes([scene], "a box and a ball", scorers)
    assert r.ok and set(r.scores) == {"global", "local"}


def test_trl_completion_as_obj_text(scorers):
    box = colored_box((128, 128, 128))
    obj_text = "Here is your mesh:\n" + "\n".join(
        [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in box.vertices] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in box.faces])
    reward = trl_reward_function(scorers, stage="global")
    (r,) = reward(["a box"], [obj_text])
    expected = score_meshes([trimesh.Trimesh(box.vertices, box.faces)], "a box", scorers)[0].scores["global"]
    assert r == pytest.approx(expected, abs=1e-5)
    assert reward(["a box"], ["v 0 0 0\nno faces here"]) == [None]
