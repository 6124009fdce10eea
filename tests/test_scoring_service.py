"""The HTTP scorer service on a real uvicorn server (127.0.0.1, free port): concurrent clients get their
own correct scores, concurrent requests are batched, limits answer 4xx, health works, mesh upload works."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import PIL.Image
import pytest
import torch

from helpers.scoring import RENDER_SIZE, mesh_files, running, scorer_set_dir

from rewardkit.scoring import load_scorer, score_meshes
from rewardkit.scoring.client import ScorerClient, ScorerServiceError, encode_views
from rewardkit.scoring.service import ServiceLimits, create_app

N_VIEWS = 4


@pytest.fixture(scope="module")
def scorers():
    return load_scorer(scorer_set_dir())


@pytest.fixture(scope="module")
def server(scorers):
    limits = ServiceLimits(max_request_bytes=2_000_000, max_items=8, max_views=8, max_image_side=128,
                           max_mesh_bytes=1_000_000)
    app = create_app(scorers, limits=limits, max_batch=16, batch_window_ms=150.0)
    with running(app) as (url, _):
        yield url, app


def _sample_views(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.rand(N_VIEWS, 3, RENDER_SIZE, RENDER_SIZE, generator=g) * 255).round().to(torch.uint8)
            for m in ("geometry", "rgb")}


def test_health(server, scorers):
    url, _ = server
    h = httpx.get(url + "/health").json()
    assert h["status"] == "ok"
    assert set(h["scorers"]) == {"global", "local"}
    assert h["scorers"]["global"]["modes"] == ["geometry"] and h["scorers"]["local"]["modes"] == ["rgb"]
    assert h["limits"]["max_views"] == 8


def test_concurrent_clients_get_their_own_correct_scores(server, scorers):
    url, app = server
    prompts = [f"a {c} {s}" for c in ("red", "green", "blue", "white") for s in ("chair", "lamp")]
    samples = [(p, _sample_views(i)) for i, p in enumerate(prompts)]
    # the reference: the same views scored locally, one sample at a time
    expected = []
    for p, v in samples:
        out = scorers.score_views({m: t.unsqueeze(0) for m, t in v.items()}, [p])
        expected.append({k: float(o.scores[0]) for k, o in out.items()})
    before = dict(app.state.batcher.stats)

    def call(i):
        with ScorerClient(url) as c:
            return c.score_views(samples[i][0], samples[i][1])

    with ThreadPoolExecutor(len(samples)) as pool:
        got = list(pool.map(call, range(len(samples))))
    for g, e in zip(got, expected):
        assert set(g["scores"]) == {"global", "local"}
        for k in e:
            assert g["scores"][k] == pytest.approx(e[k], abs=1e-4)
    stats = app.state.batcher.stats
    n_batches = stats["batches"] - before["batches"]
    assert stats["items"] - before["items"] == len(samples)
    assert n_batches < len(samples), f"{len(samples)} concurrent requests took {n_batches} batches: no batching"
    assert stats["max_batch_seen"] > 1


def test_batch_request_per_view_and_scorer_selection(server, scorers):
    url, _ = server
    with ScorerClient(url) as c:
        res = c.score_batch([{"prompt": "a red chair", "views": _sample_views(1)},
                             {"prompt": "a lamp", "views": {"rgb": _sample_views(2)["rgb"]}}], per_view=True)
        assert set(res[0]["scores"]) == {"global", "local"}
        assert set(res[1]["scores"]) == {"local"}  # only rgb sent: only the local scorer applies
        assert len(res[0]["per_view"]["global"]) == N_VIEWS
        only = c.score_views("a red chair", _sample_views(1), scorers=["global"])
        assert set(only["scores"]) == {"global"}
        assert only["scores"]["global"] == pytest.approx(res[0]["scores"]["global"], abs=1e-4)


def _post(url, body):
    return httpx.post(url + "/score", json=body, timeout=30)


def test_limits_and_bad_requests(server):
    url, _ = server
    views = encode_views(_sample_views(3))
    r = _post(url, {"prompt": "x", "views": {"rgb": views["rgb"] * 3}})  # 12 views > 8
    assert r.status_code == 422 and "limit of 8" in r.json()["detail"]
    r = _post(url, {"items": [{"prompt": "x", "views": views}] * 9})
    assert r.status_code == 422 and "limit of 8" in r.json()["detail"]
    big = PIL.Image.new("RGB", (200, 200))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    r = _post(url, {"prompt": "x", "views": {"rgb": [base64.b64encode(buf.getvalue()).decode()]}})
    assert r.status_code == 413 and "128" in r.json()["detail"]
    r = httpx.post(url + "/score", content=b"{" + b" " * 2_100_000 + b"}",
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = _post(url, {"prompt": "x", "views": {"rgb": ["not base64!!"]}})
    assert r.status_code == 400
    r = _post(url, {"prompt": "x", "views": {"normal": views["rgb"]}})
    assert r.status_code == 422 and "no scorer" in r.json()["detail"]
    r = _post(url, {"prompt": "x", "views": views, "scorers": ["nope"]})
    assert r.status_code == 422 and "unknown scorers" in r.json()["detail"]
    r = _post(url, {"views": views})
    assert r.status_code == 422 and "prompt" in r.json()["detail"]
    with ScorerClient(url, retries=0) as c:
        with pytest.raises(ScorerServiceError) as exc:
            c.score_views("x", {"rgb": _sample_views(1)["rgb"]}, scorers=["global"])
        assert exc.value.status == 422


def test_mesh_upload_matches_local_scoring(server, scorers):
    url, _ = server
    path = mesh_files()["red_box"]
    local = score_meshes([path], "a red box", scorers)[0]
    with ScorerClient(url) as c:
        got = c.score_mesh(path, "a red box", per_view=True)
        assert got["scores"]["global"] == pytest.approx(local.scores["global"], abs=1e-4)
        assert got["scores"]["local"] == pytest.approx(local.scores["local"], abs=1e-4)
        with pytest.raises(ScorerServiceError) as exc:
            c.score_mesh(mesh_files()["broken"], "x")
        assert exc.value.status == 400
    r = httpx.post(url + "/score_mesh", files={"file": ("m.xyz", b"abc")}, data={"prompt": "x"})
    assert r.status_code == 415
    r = httpx.post(url + "/score_mesh", files={"file": ("m.glb", b"0" * 1_100_000)}, data={"prompt": "x"})
    assert r.status_code == 413


def test_rl_adapters_through_the_service(server, scorers):
    from rewardkit.scoring import adapters

    url, _ = server
    files = mesh_files()
    local = score_meshes([files["red_box"], files["cone"]], ["a red box", "a cone"], scorers)
    reward = adapters.trl_reward_function(url=url, stage="global", read_paths=True)
    out = reward(["a red box", "a cone", "x"], [str(files["red_box"]), str(files["cone"]), str(files["broken"])])
    assert out[0] == pytest.approx(local[0].scores["global"], abs=1e-4)
    assert out[1] == pytest.approx(local[1].scores["global"], abs=1e-4)
    assert out[2] is None
    adapters.clear_cache()
    r = adapters.compute_score("rewardkit", str(files["cone"]), "a cone", None, server_url=url, read_paths=True)
    assert r["score"] == pytest.approx(local[1].scores["global"] + local[1].scores["local"], abs=1e-4)
    adapters.clear_cache()
