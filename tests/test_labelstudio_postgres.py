"""Label Studio on a real PostgreSQL (a private cluster started for the test, tests/helpers/postgres.py):
`rewardkit annotate up --database` (given here through REWARDKIT_LS_DATABASE), three annotator accounts
answering one project at the same time through the real API with their own tokens, then
`rewardkit annotate pull`: N answers in, N rows out, and no SQLite file anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import polars as pl
import pytest

from conftest import ls_require

from helpers.postgres import pg_missing_reason, private_cluster

ROOT = Path(__file__).resolve().parents[1]
MESHES = ROOT.parent / "shared" / "meshes"
# five candidates of one prompt: ten pairs, each answered by all three annotators
CANDIDATES = {"duck": "duck/Duck.glb", "bunny": "bunny/bunny.ply", "cow": "spot_cow/cow.obj",
              "monkey": "suzanne/monkey.glb", "teapot": "teapot/teapot.obj"}
UI_LABEL = {"a": "A", "b": "B", "tie": "Tie", "both_bad": "Both bad"}
FLIP = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}
LABELS = ("a", "b", "tie", "both_bad")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:OpenGL")]


def _rk(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rewardkit", *args], env=env, cwd=str(ROOT), capture_output=True,
                          text=True, timeout=timeout)


def _signup_token(url: str, email: str, password: str) -> str:
    """Sign up through the HTML form as a browser does, then read the account's own API token."""
    with httpx.Client(base_url=url, timeout=60, follow_redirects=False) as c:
        c.get("/user/signup/")
        r = c.post("/user/signup/", data={"email": email, "password": password,
                                          "csrfmiddlewaretoken": c.cookies.get("csrftoken")},
                   headers={"Referer": url + "/user/signup/"})
        assert r.status_code == 302, r.text[:500]
        r = c.get("/api/current-user/token")
        assert r.status_code == 200, r.text[:500]
        return r.json()["token"]


def test_three_annotators_at_once_on_postgresql(tmp_path):
    ls_require("server")
    reason = pg_missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from rewardkit.annotation import connect
    from rewardkit.data import conform, read_preferences, sample_pairs, write_table
    from rewardkit.render import render_to_dir

    db_password = "pg-" + secrets.token_urlsafe(12)
    docroot, data_dir, creds = tmp_path / "docroot", tmp_path / "ls-data", tmp_path / "credentials.json"
    renders = docroot / "renders"
    renders.mkdir(parents=True)
    with private_cluster(db_password) as pg:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "POSTGRE_", "DJANGO_DB"))}
        env.update(REWARDKIT_LS_DATABASE=pg.url(), REWARDKIT_LS_CREDENTIALS=str(creds),
                   PYTHONPATH=str(ROOT), PYOPENGL_PLATFORM="egl")
        up_log = tmp_path / "up.log"
        with open(up_log, "w") as log:
            up = subprocess.Popen([sys.executable, "-m", "rewardkit", "annotate", "up", "--renders", str(renders),
                                   "--document-root", str(docroot), "--data-dir", str(data_dir), "--port", "0",
                                   "--annotators-per-task", "3", "--credentials", str(creds)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        try:
            rows = []  # render while Label Studio creates its tables in PostgreSQL
            for item_id, mesh in CANDIDATES.items():
                res = render_to_dir(MESHES / mesh, renders / item_id, modes=("rgb", "geometry"), size=64)
                rows.append({"item_id": item_id, "prompt_id": "toy", "prompt": "a small toy", "mesh_path": res.mesh_path,
                             "mesh_sha256": res.mesh_sha256, "generator": "shared-meshes", "seed": 0,
                             "render_dir": str(renders / item_id)})
            items = conform(pl.DataFrame(rows), "items")
            pairs = sample_pairs(items, "all", seed=0)
            write_table(items, tmp_path / "items.parquet", "items")
            write_table(pairs, tmp_path / "pairs.parquet", "pairs")
            assert up.wait(timeout=400) == 0, up_log.read_text()[-4000:]
            cli = ["--data-dir", str(data_dir), "--credentials", str(creds)]
            up_args = ["annotate", "up", "--renders", str(renders), "--document-root", str(docroot), *cli]
            # `up` again reuses the running server; naming another database is refused, the password unshown
            r = _rk(*up_args, env=env)
            assert r.returncode == 0 and f"database {pg.url(with_password=False)})" in r.stdout, r.stdout + r.stderr
            r = _rk(*up_args, env={**env, "REWARDKIT_LS_DATABASE": pg.url() + "_other"})
            assert r.returncode == 2 and f"keeps its data in {pg.url(with_password=False)}, not" in r.stderr, r.stderr
            assert db_password not in r.stdout + r.stderr
            r = _rk("annotate", "push", "--items", str(tmp_path / "items.parquet"), "--pairs",
                    str(tmp_path / "pairs.parquet"), *cli, env=env)
            assert r.returncode == 0 and "imported 10 new task(s)" in r.stdout, r.stdout + r.stderr

            state = json.loads((data_dir / "rewardkit-server.json").read_text())
            url, project = state["url"], int(state["project_id"])
            assert state["database"] == pg.url(with_password=False)
            admin = connect(url, json.loads(creds.read_text())["token"])
            tasks = {t.data["pair_id"]: t for t in admin.tasks.list(project=project, fields="all")}
            assert len(tasks) == pairs.height == 10
            item_a = dict(zip(pairs["pair_id"], pairs["item_a"]))

            annotators = {f"ann{i}@example.com": _signup_token(url, f"ann{i}@example.com", secrets.token_urlsafe(10))
                          for i in range(3)}
            expected: list[tuple] = []
            errors: list[str] = []
            lock = threading.Lock()
            start = threading.Barrier(len(annotators))

            def annotate(k: int, email: str, token: str) -> None:
                """One annotator answers every task, with its own token, at the same time as the others."""
                with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Token {token}"}) as c:
                    start.wait()
                    for j, (pid, task) in enumerate(sorted(tasks.items())):
                        shown = {"global": LABELS[(j + k) % 4], "local": LABELS[(j + 2 * k + 1) % 4]}
                        result = [{"type": "choices", "from_name": q, "to_name": {"global": "a_geometry", "local": "a_rgb"}[q],
                                   "value": {"choices": [UI_LABEL[lab]]}} for q, lab in shown.items()]
                        r = c.post(f"/api/tasks/{task.id}/annotations/", json={"result": result, "lead_time": 1.0 + j})
                        with lock:
                            if r.status_code != 201:
                                errors.append(f"{email} task {task.id}: HTTP {r.status_code} {r.text[:200]}")
                                continue
                            swapped = task.data["left_item"] != item_a[pid]
                            for q, lab in shown.items():
                                expected.append((pid, q, FLIP[lab] if swapped else lab, email))

            threads = [threading.Thread(target=annotate, args=(k, e, t)) for k, (e, t) in enumerate(annotators.items())]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            assert not errors, errors
            assert len(expected) == 3 * 10 * 2
            # the answers are in PostgreSQL (Label Studio's annotations table), one per annotator and task
            assert pg.psql("SELECT count(*) FROM task_completion WHERE was_cancelled = false") == "30"

            out = tmp_path / "preferences.parquet"
            r = _rk("annotate", "pull", "--pairs", str(tmp_path / "pairs.parquet"), "--out", str(out), *cli, env=env)
            assert r.returncode == 0, r.stdout + r.stderr
            prefs = read_preferences(out)
            got = sorted((x["pair_id"], x["question"], x["label"], x["annotator"]) for x in prefs.iter_rows(named=True))
            assert got == sorted(expected)  # N answers in, N rows out: none lost, none doubled

            # no SQLite database was created; the password shows nowhere
            assert not list(tmp_path.rglob("*.sqlite3")) and not list(data_dir.rglob("*.sqlite*"))
            cmdline = Path(f"/proc/{state['pid']}/cmdline").read_bytes().decode(errors="replace")
            for text in (up_log.read_text(), (data_dir / "server.log").read_text(errors="replace"),
                         (data_dir / "rewardkit-server.json").read_text(), cmdline, r.stdout + r.stderr):
                assert db_password not in text
        finally:
            if up.poll() is None:
                up.kill()
            _rk("annotate", "down", "--data-dir", str(data_dir), env=env, timeout=60)
