"""Headless Chromium (Debian's ``chromium``, driven through Playwright's CDP client) logs into the real
Label Studio server of the session, opens the labeling page of one task and checks through the DOM that
every candidate image of the labeling interface loaded from local-files storage. A screenshot is saved
as a test artifact under test-artifacts/. Then it answers both questions in the page, submits, and the
pulled preferences hold exactly that answer, mapped through the swapped display.

It works in a project of its own on the shared server, so the server tests' row-by-row checks are unaffected.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import ls_require
from rewardkit.annotation import build_tasks, connect, ensure_local_storage, ensure_project, pull, push_tasks
from rewardkit.annotation.project import default_label_config_path

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# Playwright adds --headless and a throw-away --user-data-dir profile itself
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]
# the four grids of the labeling interface (candidate A and B x geometry and rgb), rendered by <Image>
EDITOR_IMAGES_JS = """() => [...document.querySelectorAll('.rk-pair .lsf-image img')].map(i => ({
    complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, src: i.src }))"""


def _chromium() -> str:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_labeling_page_shows_every_candidate_image(label_studio):
    ls_require("chromium")
    from playwright.sync_api import sync_playwright

    env = label_studio
    client = connect(env.url, env.token)
    project = ensure_project(client, default_label_config_path().read_text(), title="rewardkit browser check")
    ensure_local_storage(client, project.id, env.renders, env.document_root)
    # every task shown with its sides swapped relative to the pairs table
    push_tasks(client, project.id, build_tasks(env.pairs, env.items, env.document_root, display="swapped"))
    tasks = sorted(client.tasks.list(project=project.id, fields="all"), key=lambda t: t.id)
    task = tasks[0]
    pair = env.pairs.filter(env.pairs["pair_id"] == task.data["pair_id"]).row(0, named=True)
    assert task.data["left_item"] == pair["item_b"]
    expected = sorted(task.data[f"{s}_{m}"] for s in ("a", "b") for m in ("geometry", "rgb"))

    ARTIFACTS.mkdir(exist_ok=True)
    served: dict[str, tuple[int, str]] = {}
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()

            def on_response(resp):
                if "/data/local-files/" in resp.url:
                    served[resp.url.split(env.url, 1)[-1]] = (resp.status, resp.headers.get("content-type", ""))

            page.on("response", on_response)
            page.on("request", lambda req: requested.append(req.url))
            page.goto(f"{env.url}/user/login/")
            page.fill("input[name=email]", env.username)
            page.fill("input[name=password]", env.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/user/login" not in u, timeout=30_000)

            page.goto(f"{env.url}/projects/{project.id}/data?task={task.id}")
            page.wait_for_selector(".rk-pair", timeout=60_000)
            try:
                page.wait_for_function(
                    "() => { const im = [...document.querySelectorAll('.rk-pair .lsf-image img')];"
                    " return im.length >= 4 && im.every(i => i.complete && i.naturalWidth > 0); }",
                    timeout=60_000,
                )
            finally:
                page.screenshot(path=str(ARTIFACTS / "labelstudio-labeling-page.png"), full_page=True)
            images = page.evaluate(EDITOR_IMAGES_JS)
            prompt_shown = page.inner_text("body")

            # annotate like a person: A for global structure, Both bad for texture, a comment, Submit
            groups = page.locator(".rk-q .lsf-choices")
            groups.nth(0).locator('label:has(input[name="A"])').click()
            groups.nth(1).locator('label:has(input[name="Both bad"])').click()
            page.locator("textarea").first.fill("checked from the browser test")
            with page.expect_response(lambda r: "/annotations" in r.url and r.request.method == "POST", timeout=30_000) as resp:
                page.get_by_role("button", name="Submit").click()
            assert resp.value.status == 201, resp.value.text()
        finally:
            browser.close()

    assert len(images) == 4, images
    assert all(i["complete"] and i["naturalWidth"] > 0 and i["naturalHeight"] > 0 for i in images), images
    # the grids came from Label Studio's local-files storage (not copied uploads)
    for url in expected:
        assert url in served, (url, sorted(served))
        status, ctype = served[url]
        assert status == 200 and ctype.startswith("image/"), (url, status, ctype)
    assert task.data["prompt"] in prompt_shown
    # the page talked to the loopback server only (no CDN, analytics or telemetry)
    from urllib.parse import urlparse

    outside = sorted({u for u in requested if urlparse(u).scheme in ("http", "https", "ws", "wss")
                      and urlparse(u).hostname not in ("127.0.0.1", "localhost")})
    assert outside == [], outside
    assert (ARTIFACTS / "labelstudio-labeling-page.png").stat().st_size > 10_000

    result, _ = pull(client, project.id, env.pairs)
    got = [(r["pair_id"], r["question"], r["label"], r["annotator"]) for r in result.preferences.iter_rows(named=True)]
    # "A" was shown on the left = item_b of the pair, so the global answer is "b"
    assert got == [(pair["pair_id"], "global", "b", env.username), (pair["pair_id"], "local", "both_bad", env.username)]
    assert result.preferences["lead_time_s"][0] > 0
