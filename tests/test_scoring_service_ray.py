"""``rewardkit serve --engine ray``: the scorer app as two real Ray Serve replicas on loopback. A bounded load
(fixed request count, <= 60 s) gets the single-process service's scores; a replica killed (``ray.kill``)
under load loses and duplicates no request: every request id is answered once on the client, and Serve's
own request log records exactly one 200 for it. Without Ray Serve the command names the extra (exit 2)."""

from __future__ import annotations

import collections
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.blocked import blocked_env
from helpers.scoring import mesh_files, running, scorer_set_dir

ROOT = Path(__file__).resolve().parents[1]
MESHES = ("red_box", "blue_sphere", "cone")
N_LOAD = 24  # requests in each phase
CLIENTS = 6  # concurrent client threads: 3 requests in flight per replica


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference() -> dict[str, dict[str, float]]:
    """The single-process (uvicorn) service's scores of the test meshes."""
    from rewardkit.scoring.client import ScorerClient
    from rewardkit.scoring.service import create_app

    with running(create_app(str(scorer_set_dir()), device="cpu")) as (url, _), ScorerClient(url) as c:
        return {k: c.score_mesh(mesh_files()[k], f"a {k}")["scores"] for k in MESHES}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two replicas on a local Ray (4 logical CPUs), Serve's request log as JSON lines in a temp folder."""
    import ray
    from ray import serve

    from rewardkit.scoring.service_ray import start

    logs = tmp_path_factory.mktemp("serve-logs")
    port = _free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        start([str(scorer_set_dir())], port=port, replicas=2, device="cpu",
              logging_config={"encoding": "JSON", "logs_dir": str(logs)})
        yield f"http://127.0.0.1:{port}", logs
    finally:
        serve.shutdown()
        ray.shutdown()


def _score(url: str, ids: list[str], on_answer=None) -> tuple[dict[str, list[dict]], int]:
    """Each id's /score_mesh answers (a mesh per id, cycling), from CLIENTS threads -> (answers, HTTP attempts)."""
    from rewardkit.scoring.client import ScorerClient

    answers: dict[str, list[dict]] = collections.defaultdict(list)
    clients = [ScorerClient(url, backoff=0.2) for _ in range(CLIENTS)]

    def one(i: int) -> None:
        rid, mesh = ids[i], MESHES[i % len(MESHES)]
        res = clients[i % CLIENTS].score_mesh(mesh_files()[mesh], f"a {mesh}", request_id=rid)
        answers[rid].append({"mesh": mesh, **res})
        if on_answer is not None:
            on_answer(len(answers))

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(one, range(len(ids))))
    finally:
        attempts = sum(c.attempts for c in clients)
        for c in clients:
            c.close()
    return answers, attempts


def _served(logs: Path, prefix: str) -> dict[str, list[tuple[str, str]]]:
    """Serve's request log: request id -> [(replica, status)] of every /score_mesh line of ids with ``prefix``."""
    out: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for path in logs.rglob("replica_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            rid, msg = str(rec.get("request_id", "")), str(rec.get("message", ""))
            if rid.startswith(prefix) and msg.startswith("POST /score_mesh "):
                out[rid].append((str(rec.get("replica", path.name)), msg.split()[2]))
    return out


def _assert_answers(answers: dict[str, list[dict]], ids: list[str], reference: dict) -> None:
    assert sorted(answers) == sorted(ids), "requests without an answer"
    twice = [rid for rid, a in answers.items() if len(a) != 1]
    assert not twice, f"answered more than once: {twice}"
    for rid, [a] in answers.items():
        for name, want in reference[a["mesh"]].items():
            assert a["scores"][name] == pytest.approx(want, abs=1e-5), (rid, name)


@pytest.mark.slow
def test_two_replicas_answer_a_bounded_load_with_the_single_process_scores(replicas, reference):
    url, logs = replicas
    ids = [f"load-{i:03d}" for i in range(N_LOAD)]
    t0 = time.perf_counter()
    answers, attempts = _score(url, ids)
    elapsed = time.perf_counter() - t0
    print(f"{N_LOAD} meshes in {elapsed:.1f} s on 2 replicas ({attempts} HTTP attempts)")
    assert elapsed <= 60
    _assert_answers(answers, ids, reference)
    assert attempts == N_LOAD  # no retry without a failure
    time.sleep(1.0)  # the log lines of the last answers
    served = _served(logs, "load-")
    assert sorted(served) == sorted(ids)
    assert all(lines == [(lines[0][0], "200")] for lines in served.values())
    per_replica = collections.Counter(lines[0][0] for lines in served.values())
    assert len(per_replica) == 2, f"one replica did all the work: {per_replica}"


@pytest.mark.slow
def test_a_replica_killed_under_load_loses_and_duplicates_no_request(replicas, reference):
    import ray

    url, logs = replicas
    ids = [f"kill-{i:03d}" for i in range(N_LOAD)]
    killed: list[str] = []
    lock = threading.Lock()

    def kill_one(n_answered: int) -> None:
        with lock:
            if n_answered < N_LOAD // 4 or killed:
                return
            killed.append("?")  # once
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                           if a["name"].startswith("SERVE_REPLICA::"))
        killed[0] = names[0]
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

    answers, attempts = _score(url, ids, on_answer=kill_one)
    print(f"killed {killed}; {N_LOAD} requests answered after {attempts} HTTP attempts")
    assert killed and killed[0] != "?"
    _assert_answers(answers, ids, reference)
    time.sleep(1.0)
    served = _served(logs, "kill-")
    assert sorted(served) == sorted(ids)
    doubles = {rid: lines for rid, lines in served.items() if [s for _, s in lines].count("200") != 1}
    assert not doubles, f"request ids with other than one 200 in Serve's log: {doubles}"
    # the kill hit requests in flight (6 clients, 2 replicas): they failed once and the client's retry got
    # them answered by the other replica
    assert attempts > N_LOAD, "the killed replica held no request: nothing was tested"


@pytest.mark.slow  # a subprocess that imports torch: 8-21 s here
def test_serve_engine_ray_without_ray_names_the_extra(tmp_path):
    """With Ray unimportable, ``rewardkit serve --engine ray`` is one line naming rewardkit[ray], exit 2."""
    env = blocked_env(tmp_path, {"ray"})
    p = subprocess.run([sys.executable, "-m", "rewardkit", "serve", "--scorer", str(scorer_set_dir()), "--engine", "ray"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "rewardkit[ray]" in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_serve_run_app_builder_reads_its_arguments():
    """``serve run rewardkit.scoring.service_ray:app_builder scorer=DIR replicas=N <limit>=value``: an
    application, and a clear error for a missing scorer or an unknown argument (no Ray cluster needed)."""
    from ray.serve import Application

    from rewardkit.scoring.service_ray import app_builder

    app = app_builder({"scorer": str(scorer_set_dir()), "replicas": "3", "max_items": "8", "body_timeout_s": "5"})
    assert isinstance(app, Application)
    with pytest.raises(ValueError, match="needs scorer=DIR"):
        app_builder({"replicas": "2"})
    with pytest.raises(ValueError, match=r"unknown arguments \['replica'\]"):
        app_builder({"scorer": str(scorer_set_dir()), "replica": "2"})
    with pytest.raises(ValueError, match="max_items must be a positive number"):
        app_builder({"scorer": str(scorer_set_dir()), "max_items": "0"})
