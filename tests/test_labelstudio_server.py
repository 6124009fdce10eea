"""Integration with a REAL Label Studio server (fixture ``label_studio`` in conftest.py: one server per
session, started by `rewardkit annotate up` on a free loopback port with a temporary data directory).

Tasks are pushed for rendered pairs, annotations are posted through the API the way the labeling UI
posts them (cookie session + CSRF, ``POST /api/tasks/<id>/annotations/?project=<id>``), and the pulled
preferences table is checked row by row.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

import httpx
import polars as pl
import pytest
from click.testing import CliRunner

from rewardkit.annotation import (
    MissingRenderFiles,
    ServerUnreachable,
    build_tasks,
    connect,
    export_tasks,
    find_free_port,
    progress,
    pull,
    push_tasks,
    qc_report,
    user_map,
)
from rewardkit.cli import main as cli
from rewardkit.data import read_preferences, write_table

FLIP = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}
UI_LABEL = {"a": "A", "b": "B", "tie": "Tie", "both_bad": "Both bad"}


class UiSession:
    """What the browser does: sign up / log in through the HTML forms, then call the API with the
    session cookie and the CSRF token, posting annotations with the labeling UI's payload."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.c = httpx.Client(base_url=url, timeout=30, follow_redirects=False)

    def _form(self, path: str, data: dict) -> httpx.Response:
        self.c.get(path)
        data = {**data, "csrfmiddlewaretoken": self.c.cookies.get("csrftoken")}
        return self.c.post(path, data=data, headers={"Referer": self.url + path})

    def signup(self, email: str, password: str) -> "UiSession":
        r = self._form("/user/signup/", {"email": email, "password": password})
        assert r.status_code == 302, r.text[:500]
        assert self.c.get("/api/current-user/whoami").json()["email"] == email
        return self

    def _post_annotation(self, task_id: int, project_id: int, body: dict, query: str = "") -> dict:
        headers = {"X-CSRFToken": self.c.cookies.get("csrftoken"), "Referer": f"{self.url}/projects/{project_id}/data?task={task_id}"}
        r = self.c.post(f"/api/tasks/{task_id}/annotations/?project={project_id}{query}", json=body, headers=headers)
        assert r.status_code == 201, r.text[:500]
        return r.json()

    def submit(self, task_id: int, project_id: int, answers: dict[str, str], lead_time: float, comment: str | None = None) -> dict:
        result = [
            {"id": secrets.token_hex(5), "type": "choices", "value": {"choices": [UI_LABEL[lab]]}, "origin": "manual",
             "to_name": {"global": "a_geometry", "local": "a_rgb"}[q], "from_name": q}
            for q, lab in answers.items()
        ]
        if comment:
            result.append({"id": secrets.token_hex(5), "type": "textarea", "value": {"text": [comment]}, "origin": "manual",
                           "to_name": "prompt", "from_name": "comment"})
        body = {"lead_time": lead_time, "result": result, "draft_id": None, "parent_prediction": None,
                "parent_annotation": None, "started_at": datetime.now(timezone.utc).isoformat()}
        return self._post_annotation(task_id, project_id, body)

    def skip(self, task_id: int, project_id: int, lead_time: float) -> dict:
        body = {"lead_time": lead_time, "result": [], "draft_id": None, "parent_prediction": None,
                "parent_annotation": None, "started_at": datetime.now(timezone.utc).isoformat(), "was_cancelled": True}
        return self._post_annotation(task_id, project_id, body, "&was_cancelled=1")


@pytest.fixture(scope="module")
def client(label_studio):
    return connect(label_studio.url, label_studio.token)


@pytest.fixture(scope="module")
def pushed(label_studio, client):
    """Push every pair (display sides flipped at random, seeded), then push again."""
    env = label_studio
    tasks = build_tasks(env.pairs, env.items, env.document_root, display="random", seed=3)
    first = push_tasks(client, env.project_id, tasks)
    second = push_tasks(client, env.project_id, tasks)
    by_pair = {t.data["pair_id"]: t for t in client.tasks.list(project=env.project_id, fields="all")}
    return tasks, first, second, by_pair


@pytest.mark.slow
def test_push_imports_each_pair_once(label_studio, pushed):
    _tasks, first, second, by_pair = pushed
    n = label_studio.pairs.height
    assert n == 4  # 3 animal pairs + 1 object pair
    assert first.imported == n and first.skipped_existing == 0 and len(first.task_ids) == n
    assert second.imported == 0 and second.skipped_existing == n
    assert sorted(by_pair) == sorted(label_studio.pairs["pair_id"].to_list())
    # the seeded random display really swapped some pairs and kept others
    sides = {r["pair_id"]: r["item_a"] for r in label_studio.pairs.iter_rows(named=True)}
    swapped = [p for p, t in by_pair.items() if t.data["left_item"] != sides[p]]
    assert 0 < len(swapped) < n


@pytest.mark.slow
def test_push_twice_through_cli_imports_nothing_new(label_studio, pushed, tmp_path):
    env = label_studio
    write_table(env.items, tmp_path / "items.parquet", "items")
    write_table(env.pairs, tmp_path / "pairs.parquet", "pairs")
    r = CliRunner().invoke(cli, ["annotate", "push", "--items", str(tmp_path / "items.parquet"),
                                 "--pairs", str(tmp_path / "pairs.parquet"), *env.cli_args()])
    assert r.exit_code == 0, r.output
    assert "imported 0 new task(s); 4 pair(s) already had a task" in r.output


@pytest.mark.slow
def test_tasks_reference_render_grids_served_from_local_files(label_studio, pushed):
    env = label_studio
    _, _, _, by_pair = pushed
    for task in by_pair.values():
        d = task.data
        for side, item in (("a", d["left_item"]), ("b", d["right_item"])):
            for mode in ("geometry", "rgb"):
                url = d[f"{side}_{mode}"]
                assert url == f"/data/local-files/?d=renders/{item}/grid_{mode}.png"
                r = httpx.get(env.url + url, headers={"Authorization": f"Token {env.token}"}, timeout=30)
                assert r.status_code == 200, (url, r.status_code)
                assert r.content == (env.renders / item / f"grid_{mode}.png").read_bytes()


@pytest.fixture(scope="module")
def annotated(label_studio, client, pushed):
    """Annotations from three annotators; returns the expected preferences rows (pairs orientation)."""
    env = label_studio
    _, _, _, by_pair = pushed
    pairs = env.pairs.sort("pair_id")
    p = pairs["pair_id"].to_list()
    ann1 = UiSession(env.url).signup("ann1@example.com", "ann1-" + secrets.token_hex(6))
    ann2 = UiSession(env.url).signup("ann2@example.com", "ann2-" + secrets.token_hex(6))
    sides = {r["pair_id"]: r["item_a"] for r in pairs.iter_rows(named=True)}
    expected: list[tuple] = []

    def answer(who: str, sess, pid: str, display: dict[str, str], lead: float, comment: str | None = None) -> None:
        task = by_pair[pid]
        if sess is None:  # the admin answers through the SDK with its API token
            client.annotations.create(
                id=task.id, lead_time=lead,
                result=[{"type": "choices", "from_name": q, "to_name": {"global": "a_geometry", "local": "a_rgb"}[q],
                         "value": {"choices": [UI_LABEL[lab]]}} for q, lab in display.items()],
            )
        else:
            sess.submit(task.id, env.project_id, display, lead, comment)
        swapped = task.data["left_item"] != sides[pid]
        for q, lab in display.items():
            expected.append((pid, q, FLIP[lab] if swapped else lab, who, lead))

    answer("admin@example.com", None, p[0], {"global": "a", "local": "tie"}, 12.5)
    answer("ann1@example.com", ann1, p[0], {"global": "a", "local": "b"}, 8.0, comment="the duck lost its beak")
    ann2.skip(by_pair[p[0]].id, env.project_id, 3.0)  # cancelled: skipped and counted
    answer("admin@example.com", None, p[1], {"global": "b", "local": "both_bad"}, 20.0)
    answer("ann1@example.com", ann1, p[1], {"global": "a", "local": "a"}, 6.5)
    answer("ann2@example.com", ann2, p[2], {"global": "tie", "local": "a"}, 9.25)
    # p[3]: nobody
    return sorted(expected), {"swapped": {q for q in p if by_pair[q].data["left_item"] != sides[q]}}


@pytest.mark.slow
def test_pull_gives_preferences_row_by_row(label_studio, client, annotated):
    env = label_studio
    expected, info = annotated
    assert info["swapped"], "at least one annotated pair must have been displayed swapped"
    result, raw = pull(client, env.project_id, env.pairs)
    got = sorted(
        (r["pair_id"], r["question"], r["label"], r["annotator"], r["lead_time_s"])
        for r in result.preferences.iter_rows(named=True)
    )
    assert got == expected  # nothing lost, nothing duplicated, A/B mapped through left_item
    assert set(result.preferences["source"].to_list()) == {"labelstudio"}
    assert all(result.preferences["created_at"].to_list())
    assert result.counts["cancelled"] == 1
    assert result.counts["comments"] == 1 and result.counts.get("ignored_result", 0) == 0
    assert result.skipped == {"cancelled": 1}
    assert len(raw) == 4
    # the comment typed in the page reaches the table, on both rows of that answer
    commented = result.preferences.filter(pl.col("comment").is_not_null())
    assert set(commented["annotator"]) == {"ann1@example.com"} and commented.height == 2
    assert set(commented["comment"]) == {"the duck lost its beak"}


@pytest.mark.slow
def test_pull_cli_writes_the_table_and_status_shows_progress(label_studio, annotated, tmp_path):
    env = label_studio
    expected, _ = annotated
    write_table(env.pairs, tmp_path / "pairs.parquet", "pairs")
    write_table(env.items, tmp_path / "items.parquet", "items")
    out = tmp_path / "prefs.parquet"
    r = CliRunner().invoke(cli, ["annotate", "pull", "--pairs", str(tmp_path / "pairs.parquet"), "--out", str(out),
                                 "--raw-out", str(tmp_path / "raw.json"), "--items", str(tmp_path / "items.parquet"),
                                 "--hf-out", str(tmp_path / "hf"), "--hf-embed-images", *env.cli_args()])
    assert r.exit_code == 0, r.output
    assert "skipped: cancelled=1" in r.output
    # the same words and numbers as `status` below: 5 answered annotations, 1 skipped
    assert "10 preference rows from 5 answered annotations (1 skipped) on 4 tasks" in r.output
    prefs = read_preferences(out)
    assert prefs.height == len(expected)
    assert prefs.filter(pl.col("comment") == "the duck lost its beak").height == 2
    assert json.loads((tmp_path / "raw.json").read_text())[0]["data"]["pair_id"]
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == len(expected)
    assert isinstance(ds.features["a_grid_rgb"], datasets.Image)  # the pixels, not a path
    from PIL import Image

    row = ds[0]
    assert row["a_grid_rgb"].size == Image.open(env.renders / row["item_a"] / "grid_rgb.png").size
    assert "the duck lost its beak" in ds["comment"]

    r = CliRunner().invoke(cli, ["annotate", "status", "--json", *env.cli_args()])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert (st["tasks"], st["tasks_answered"], st["tasks_skipped"], st["tasks_left"]) == (4, 3, 0, 1)
    assert (st["annotations"], st["answered"], st["skipped"]) == (6, 5, 1)
    assert st["annotators_per_task"] == 3 and st["tasks_below_overlap"] == 4
    assert st["per_annotator"] == {
        "admin@example.com": {"answered": 2, "skipped": 0},
        "ann1@example.com": {"answered": 2, "skipped": 0},
        "ann2@example.com": {"answered": 1, "skipped": 1},
    }
    r = CliRunner().invoke(cli, ["annotate", "status", *env.cli_args()])
    assert r.exit_code == 0, r.output
    assert "4 tasks: 3 answered, 0 skipped, 1 left; 6 annotations: 5 answered, 1 skipped" in r.output
    report = qc_report(prefs, min_overlap=1)
    assert report["questions"]["global"]["units_with_2plus"] == 2
    r = CliRunner().invoke(cli, ["annotate", "qc", "--preferences", str(out), "--json", str(tmp_path / "qc.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "qc.json").read_text())["n_rows"] == len(expected)


@pytest.mark.slow
def test_progress_matches_users(label_studio, client, annotated):
    users = user_map(client)
    assert {"admin@example.com", "ann1@example.com", "ann2@example.com"} <= set(users.values())
    prog = progress(export_tasks(client, label_studio.project_id), users)
    assert prog["tasks_left"] == 1


@pytest.mark.slow
def test_missing_render_files_fail_task_creation(label_studio, client, tmp_path):
    env = label_studio
    items = env.items.with_columns(
        pl.when(pl.col("item_id") == "cow").then(pl.lit(str(tmp_path / "nowhere" / "cow"))).otherwise(pl.col("render_dir")).alias("render_dir")
    )
    broken = tmp_path / "broken_duck"
    broken.mkdir()
    (broken / "grid_geometry.png").write_bytes((env.renders / "duck" / "grid_geometry.png").read_bytes())
    items = items.with_columns(
        pl.when(pl.col("item_id") == "duck").then(pl.lit(str(broken))).otherwise(pl.col("render_dir")).alias("render_dir")
    )
    with pytest.raises(MissingRenderFiles) as exc:
        build_tasks(env.pairs, items, tmp_path)
    want = sorted([str(tmp_path / "nowhere" / "cow" / "grid_geometry.png"), str(tmp_path / "nowhere" / "cow" / "grid_rgb.png"),
                   str(broken / "grid_rgb.png")])
    assert sorted(exc.value.missing) == want
    for w in want:
        assert w in str(exc.value)
    # through the CLI: the push fails, lists what is missing, and creates no task
    before = len(list(client.tasks.list(project=env.project_id)))
    write_table(items, tmp_path / "items.parquet", "items")
    write_table(env.pairs, tmp_path / "pairs.parquet", "pairs")
    r = CliRunner().invoke(cli, ["annotate", "push", "--items", str(tmp_path / "items.parquet"),
                                 "--pairs", str(tmp_path / "pairs.parquet"), *env.cli_args()])
    assert r.exit_code != 0
    assert "3 render file(s) missing" in r.output and str(broken / "grid_rgb.png") in r.output
    assert len(list(client.tasks.list(project=env.project_id))) == before


def test_unreachable_server_is_a_clear_error_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{find_free_port()}"
    with pytest.raises(ServerUnreachable) as exc:
        connect(url, "some-token")
    assert url in str(exc.value)
    r = CliRunner().invoke(cli, ["annotate", "status", "--url", url, "--data-dir", str(tmp_path),
                                 "--credentials", str(tmp_path / "none.json")])
    assert r.exit_code != 0
    assert url in r.output and "unreachable" in r.output
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_up_against_an_already_running_server_creates_a_second_project(label_studio, client, tmp_path):
    env = label_studio
    r = CliRunner().invoke(cli, ["annotate", "up", "--url", env.url, "--renders", str(env.renders),
                                 "--document-root", str(env.document_root), "--data-dir", str(tmp_path / "state"),
                                 "--credentials", str(env.credentials), "--title", "rewardkit second round"])
    assert r.exit_code == 0, r.output
    assert env.password not in r.output and env.token not in r.output
    state = json.loads((tmp_path / "state" / "rewardkit-server.json").read_text())
    assert state["url"] == env.url and state["project_id"] != env.project_id
    project = client.projects.get(id=state["project_id"])
    assert project.title == "rewardkit second round" and "<Choices name=\"global\"" in project.label_config
    storages = client.import_storage.local.list(project=state["project_id"])
    assert [Path(s.path) for s in storages] == [env.renders]
    # running it again updates in place: same project, storage registered once
    r = CliRunner().invoke(cli, ["annotate", "up", "--url", env.url, "--renders", str(env.renders),
                                 "--document-root", str(env.document_root), "--data-dir", str(tmp_path / "state"),
                                 "--credentials", str(env.credentials), "--title", "rewardkit second round"])
    assert r.exit_code == 0 and "updated" in r.output, r.output
    assert len(client.import_storage.local.list(project=state["project_id"])) == 1


@pytest.mark.slow
def test_secrets_are_never_printed_nor_on_the_command_line(label_studio):
    env = label_studio
    out = env.up_log.read_text()
    assert env.url in out and str(env.credentials) in out
    assert env.password not in out and env.token not in out
    cmdline = Path(f"/proc/{env.pid}/cmdline").read_bytes().decode(errors="replace")
    assert "label-studio" in cmdline and "127.0.0.1" in cmdline
    assert env.password not in cmdline and env.token not in cmdline
    server_log = (env.data_dir / "server.log").read_text(errors="replace")
    assert env.password not in server_log and env.token not in server_log
    # no telemetry / version checks leave the machine
    assert "sentry.io" not in server_log and "pypi.org" not in server_log


@pytest.mark.slow
def test_personal_access_token_works_too(label_studio, client):
    """Label Studio's personal access tokens (JWT refresh tokens) are accepted besides legacy tokens."""
    env = label_studio
    settings = client.jwt_settings.get()
    if not settings.api_tokens_enabled:
        client.jwt_settings.update(api_tokens_enabled=True, legacy_api_tokens_enabled=True,
                                   api_token_ttl_days=settings.api_token_ttl_days or 30)
    pat = client.tokens.create().token
    assert pat.count(".") == 2  # a JWT
    pat_client = connect(env.url, pat)
    assert pat_client.users.whoami().email == env.username
    assert pat_client.projects.get(id=env.project_id).id == env.project_id


def _one_line_error(r, code: int = 2) -> str:
    """The CLI failed with ``code``, one ``rewardkit annotate <cmd>: error: ...`` line at the end of stderr
    (after progress lines; the format of every rewardkit command) and no traceback."""
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # not an uncaught exception
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^(\S+ )?annotate [\w-]+: error: ", line)]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    return errors[0]


@pytest.mark.slow
def test_sdk_and_server_errors_are_one_line_messages(label_studio, pushed, tmp_path):
    env = label_studio
    write_table(env.items, tmp_path / "items.parquet", "items")
    write_table(env.pairs, tmp_path / "pairs.parquet", "pairs")
    # a project id that does not exist: status, push and pull
    for cmd in (["status"], ["push", "--items", str(tmp_path / "items.parquet"), "--pairs", str(tmp_path / "pairs.parquet")],
                ["pull", "--pairs", str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "p.parquet")]):
        r = CliRunner().invoke(cli, ["annotate", *cmd, "--project", "99999", *env.cli_args()])
        msg = _one_line_error(r)
        assert "no project with id 99999" in msg and env.url in msg and "HTTP 404" in msg
    assert not (tmp_path / "p.parquet").exists()
    # a wrong API key
    r = CliRunner().invoke(cli, ["annotate", "status", *env.cli_args()], env={"LABEL_STUDIO_API_KEY": "0" * 40})
    msg = _one_line_error(r)
    assert "rejected the API token" in msg and "HTTP 401" in msg
    # `up` against the running server with a document root it does not serve: Label Studio refuses the
    # local-files storage (an SDK ApiError): its HTTP status and detail, on one line
    other = tmp_path / "elsewhere"
    (other / "renders").mkdir(parents=True)
    r = CliRunner().invoke(cli, ["annotate", "up", "--url", env.url, "--renders", str(other / "renders"),
                                 "--document-root", str(other), "--data-dir", str(tmp_path / "state"),
                                 "--credentials", str(env.credentials), "--title", "rewardkit wrong root"])
    msg = _one_line_error(r)
    assert "answered HTTP 400 while registering" in msg and "LOCAL_FILES_DOCUMENT_ROOT" in msg.upper()


@pytest.mark.slow
def test_up_prints_progress_on_the_way(label_studio):
    """The first `up` takes ~40 s: it says what it is doing (starting, waiting, project, storage)."""
    out = label_studio.up_log.read_text()
    for line in ("starting Label Studio", "waiting for Label Studio to answer at", "Label Studio answers at",
                 "creating or updating project 'rewardkit' (3 annotator(s) per task)",
                 "registering " + str(label_studio.renders)):
        assert line in out, (line, out)


@pytest.mark.slow
def test_pull_lists_broken_tasks_with_their_ids_and_exits_1(label_studio, client, tmp_path):
    """A project holding a task for a pair that is not in the pairs table (and a good one): the good rows
    are written, the broken task is named on stderr and in --problems-out, exit code 1."""
    from rewardkit.annotation import ensure_project

    env = label_studio
    xml = (Path(__file__).resolve().parents[1] / "annotation" / "label_config.xml").read_text()
    info = ensure_project(client, xml, title="rewardkit broken rows")
    [good] = build_tasks(env.pairs.head(1), env.items, env.document_root)
    pid = good["pair_id"]
    answer = [{"type": "choices", "from_name": "global", "to_name": "a_geometry", "value": {"choices": ["A"]}}]
    resp = client.projects.import_tasks(id=info.id, return_task_ids=True, request=[
        {"data": good, "annotations": [{"result": answer}]},
        {"data": {**good, "pair_id": "p-gone"}, "annotations": [{"result": answer}]},
    ])
    gone_id = int(resp.task_ids[1])
    write_table(env.pairs, tmp_path / "pairs.parquet", "pairs")
    out = tmp_path / "prefs.parquet"
    r = CliRunner().invoke(cli, ["annotate", "pull", "--project", str(info.id), "--pairs", str(tmp_path / "pairs.parquet"),
                                 "--out", str(out), "--problems-out", str(tmp_path / "problems.jsonl"), *env.cli_args()])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert f"unknown_pair: task {gone_id}: pair_id p-gone is not in the pairs table" in r.stderr
    assert "1 preference rows from 2 answered annotations (0 skipped) on 2 tasks" in r.stdout
    assert read_preferences(out)["pair_id"].to_list() == [pid]
    problems = [json.loads(line) for line in (tmp_path / "problems.jsonl").read_text().splitlines()]
    assert problems == [{"kind": "unknown_pair", "task": gone_id, "annotation": None,
                         "detail": "pair_id p-gone is not in the pairs table", "row_kept": False}]
