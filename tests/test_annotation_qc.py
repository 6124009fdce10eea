"""QC report, credentials handling, server configuration and the Hugging Face dataset export (no server)."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from rewardkit.annotation import (
    AnnotationError,
    Credentials,
    LabelStudioServer,
    ServerConfig,
    ServerStartError,
    load_credentials,
    print_report,
    qc_report,
    save_credentials,
)
from rewardkit.annotation.project import local_files_url, relative_to_root
from rewardkit.annotation.server import find_label_studio_bin
from rewardkit.cli import main as cli
from rewardkit.data import conform, preferences_table_joined, save_hf_dataset, write_table


def prefs(rows: list[tuple]) -> pl.DataFrame:
    return conform(pl.DataFrame(
        [{"pair_id": p, "question": q, "label": lab, "annotator": a, "lead_time_s": lt, "created_at": "2026-01-01T00:00:00Z",
          "source": "labelstudio"} for p, q, lab, a, lt in rows]
    ), "preferences")


def three_annotators() -> pl.DataFrame:
    rows = []
    truth = ["a", "b", "a", "tie", "b", "a", "b", "a"]
    for i, t in enumerate(truth):
        for q in ("global", "local"):
            rows.append((f"p{i}", q, t, "alice", 10.0 + i))
            rows.append((f"p{i}", q, t, "bob", 20.0))
            rows.append((f"p{i}", q, t, "carol", 15.0))
            rows.append((f"p{i}", q, {"a": "b", "b": "a", "tie": "both_bad"}[t], "mallory", 1.0))  # always disagrees
    return prefs(rows)


def test_qc_report_numbers():
    df = three_annotators()
    r = qc_report(df, threshold=0.6, min_overlap=5, min_lead_time_s=2.0)
    g = r["questions"]["global"]
    assert g["n"] == 32 and g["units"] == 8 and g["units_with_2plus"] == 8
    assert g["label_counts"] == {"a": 4 * 3 + 3, "b": 3 * 3 + 4, "tie": 3, "both_bad": 1}
    assert g["pairwise_agreement"] == pytest.approx(3 / 6)  # per unit: alice=bob=carol, all != mallory
    import krippendorff

    code = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
    sub = df.filter(pl.col("question") == "global")
    mat = np.array([[code[sub.filter((pl.col("annotator") == a) & (pl.col("pair_id") == f"p{i}"))["label"][0]] for i in range(8)]
                    for a in ("alice", "bob", "carol", "mallory")], dtype=float)
    assert g["krippendorff_alpha"] == pytest.approx(krippendorff.alpha(reliability_data=mat, level_of_measurement="nominal"))
    s = r["annotator_stats"]
    assert s["alice"]["agreement_with_majority"] == 1.0 and s["bob"]["agreement_with_majority"] == 1.0
    assert s["mallory"]["agreement_with_majority"] == 0.0
    assert s["alice"]["overlap_units"] == 16  # 8 pairs x 2 questions, majority of the others (bob, carol, mallory)
    assert s["alice"]["median_lead_time_s"] == pytest.approx(13.5)
    assert {(f["annotator"], f["reason"]) for f in r["flags"]} == {("mallory", "low_agreement"), ("mallory", "fast")}
    json.dumps(r)  # JSON-serializable


def test_qc_no_overlap_and_single_category():
    r = qc_report(prefs([("p1", "global", "a", "u1", 1.0), ("p2", "global", "b", "u2", None)]))
    assert r["questions"]["global"]["krippendorff_alpha"] is None
    assert r["questions"]["global"]["pairwise_agreement"] is None
    assert r["questions"]["local"]["n"] == 0 and r["flags"] == []
    r = qc_report(prefs([("p1", "global", "a", "u1", 1.0), ("p1", "global", "a", "u2", 2.0)]))
    assert r["questions"]["global"]["krippendorff_alpha"] == 1.0


def test_qc_terminal_rendering_and_cli(tmp_path):
    df = three_annotators()
    buf = io.StringIO()
    print_report(qc_report(df), Console(file=buf, width=160, force_terminal=False))
    text = buf.getvalue()
    for word in ("global", "local", "alice", "bob", "carol", "mallory", "FLAG", "Krippendorff"):
        assert word in text
    write_table(df, tmp_path / "prefs.parquet", "preferences")
    r = CliRunner().invoke(cli, ["annotate", "qc", "--preferences", str(tmp_path / "prefs.parquet"), "--threshold", "0.5",
                                 "--json", str(tmp_path / "qc.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "qc.json").read_text())
    assert rep["threshold"] == 0.5 and [f["annotator"] for f in rep["flags"]] == ["mallory"]


def test_credentials_env_file_and_secrecy(tmp_path, monkeypatch):
    for k in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    path = tmp_path / "creds.json"
    c = Credentials(url="http://127.0.0.1:1", username="me@lab.org").with_defaults()
    assert len(c.token) == 40 and len(c.password) >= 16
    save_credentials(c, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for text in (repr(c), str(c), repr(ServerConfig.from_credentials(c))):
        assert c.password not in text and c.token not in text
    loaded = load_credentials(path)
    assert (loaded.url, loaded.username, loaded.password, loaded.token) == (c.url, c.username, c.password, c.token)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "from-env")
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:2")
    env = load_credentials(path)
    assert env.token == "from-env" and env.url == "http://127.0.0.1:2" and env.password == c.password
    assert load_credentials(tmp_path / "absent.json", env={}).token is None
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError) as exc:
        load_credentials(tmp_path / "bad.json")
    assert "{nope" not in str(exc.value)


def test_server_passes_secrets_by_environment_not_argv(tmp_path, monkeypatch):
    monkeypatch.setenv("USERNAME", "host-user")
    cfg = ServerConfig(data_dir=tmp_path / "d", document_root=tmp_path, username="a@b.org", password="pw-secret-123",
                       token="t" * 40, port=12345)
    server = LabelStudioServer(cfg)
    env = server._env()
    assert env["LABEL_STUDIO_USERNAME"] == "a@b.org" and env["LABEL_STUDIO_PASSWORD"] == "pw-secret-123"
    assert env["LABEL_STUDIO_USER_TOKEN"] == "t" * 40
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path.resolve())
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert "USERNAME" not in env  # Label Studio would read a bare USERNAME as the admin's e-mail
    assert cfg.url == "http://127.0.0.1:12345"
    assert "pw-secret-123" not in repr(cfg)


def test_missing_label_studio_binary_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("REWARDKIT_LABEL_STUDIO_BIN", str(tmp_path / "nope"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import rewardkit.annotation.server as srv

    monkeypatch.setattr(srv, "_PKG_ROOT", tmp_path)
    with pytest.raises(ServerStartError, match="pip install label-studio"):
        find_label_studio_bin()


def test_local_files_urls(tmp_path):
    (tmp_path / "renders" / "item 1").mkdir(parents=True)
    assert local_files_url(tmp_path / "renders" / "item 1" / "grid_rgb.png", tmp_path) == "/data/local-files/?d=renders/item%201/grid_rgb.png"
    assert relative_to_root(tmp_path / "renders", tmp_path) == "renders"
    with pytest.raises(AnnotationError, match="not under the local-files document root"):
        local_files_url("/elsewhere/grid.png", tmp_path)


@pytest.fixture
def small_tables(tmp_path):
    items = []
    for i in ("x", "y", "z"):
        d = tmp_path / "renders" / i
        d.mkdir(parents=True)
        for m in ("geometry", "rgb"):
            Image.new("RGB", (12, 8), (10 * len(i), 100, 200)).save(d / f"grid_{m}.png")
        items.append({"item_id": i, "prompt_id": "q", "prompt": "a red chair", "mesh_path": f"{i}.glb", "mesh_sha256": "0" * 64,
                      "generator": "g", "seed": 1, "render_dir": str(d)})
    items = conform(pl.DataFrame(items), "items")
    pairs = conform(pl.DataFrame({"pair_id": ["p1", "p2"], "prompt_id": ["q", "q"], "item_a": ["x", "z"], "item_b": ["y", "y"]}), "pairs")
    pr = prefs([("p1", "global", "a", "u1", 3.0), ("p1", "local", "tie", "u1", 3.0), ("p2", "global", "b", "u2", None)])
    return items, pairs, pr


def test_joined_table_and_hf_dataset(tmp_path, small_tables):
    import datasets

    items, pairs, pr = small_tables
    j = preferences_table_joined(pr, pairs, items)
    row = j.filter((pl.col("pair_id") == "p1") & (pl.col("question") == "global")).row(0, named=True)
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("a red chair", "x", "y")
    assert row["a_grid_rgb"] == str(tmp_path / "renders" / "x" / "grid_rgb.png")
    assert j.filter(pl.col("label") == "tie")["chosen"].to_list() == [None]
    assert j.filter(pl.col("pair_id") == "p2")["chosen"].to_list() == ["y"]

    out = save_hf_dataset(pr, pairs, items, tmp_path / "hf")
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 3 and ds.features["label"].dtype == "string" and ds.features["lead_time_s"].dtype == "float64"
    assert sorted(ds["pair_id"]) == ["p1", "p1", "p2"]

    emb = save_hf_dataset(pr, pairs, items, tmp_path / "hf_img", embed_images=True)
    ds = datasets.load_from_disk(str(emb))
    assert isinstance(ds.features["a_grid_rgb"], datasets.Image)
    assert ds[0]["b_grid_geometry"].size == (12, 8)


def test_hf_dataset_paths_are_absolute_and_comments_carried(tmp_path, small_tables, monkeypatch):
    import datasets

    items, pairs, pr = small_tables
    rel = items.with_columns(pl.col("render_dir").str.replace(str(tmp_path) + "/", "", literal=True))
    assert not rel["render_dir"][0].startswith("/")
    pr = pr.with_columns(pl.when(pl.col("annotator") == "u2").then(pl.lit("the mug has no handle")).otherwise(None).alias("comment"))
    # relative render folders are taken from render_root, else from the working directory (as `push` does)
    j = preferences_table_joined(pr, pairs, rel, render_root=tmp_path)
    assert set(j["a_grid_rgb"]) == {str(tmp_path / "renders" / "x" / "grid_rgb.png"), str(tmp_path / "renders" / "z" / "grid_rgb.png")}
    monkeypatch.chdir(tmp_path)
    ds = datasets.load_from_disk(str(save_hf_dataset(pr, pairs, rel, tmp_path / "hf")))
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in ds["b_grid_geometry"])
    assert sorted(c for c in ds["comment"] if c) == ["the mug has no handle"] and ds["comment"].count(None) == 2


def test_old_preferences_tables_without_comment_still_read(tmp_path):
    from rewardkit.data import read_preferences

    old = pl.DataFrame({"pair_id": ["p1"], "question": ["global"], "label": ["a"], "annotator": ["u"],
                        "lead_time_s": [1.0], "created_at": ["2026-01-01T00:00:00Z"], "source": ["labelstudio"]})
    old.write_parquet(tmp_path / "old.parquet")  # written before the comment column existed
    got = read_preferences(tmp_path / "old.parquet")
    assert got.columns[-1] == "comment" and got["comment"].to_list() == [None]
    assert qc_report(got)["n_rows"] == 1


def test_hf_rejects_unknown_pairs(small_tables):
    from rewardkit.data import TableError

    items, pairs, _pr = small_tables
    with pytest.raises(TableError, match="not in the pairs table"):
        preferences_table_joined(prefs([("zz", "global", "a", "u", 1.0)]), pairs, items)


def test_items_from_renders_and_pairs_cli(tmp_path, small_tables):
    _items, _, _ = small_tables
    for i in ("x", "y", "z"):
        (tmp_path / "renders" / i / "meta.json").write_text(json.dumps({"mesh_path": f"/m/{i}.glb", "mesh_sha256": "ab" * 32}))
    (tmp_path / "prompts.csv").write_text("item_id,prompt\nx,a red chair\ny,a red chair\nz,a red chair\n")
    r = CliRunner().invoke(cli, ["annotate", "pairs", "--renders", str(tmp_path / "renders"), "--prompts", str(tmp_path / "prompts.csv"),
                                 "--out-items", str(tmp_path / "items.parquet"), "--out", str(tmp_path / "pairs.parquet")])
    assert r.exit_code == 0, r.output
    it = pl.read_parquet(tmp_path / "items.parquet")
    assert it["prompt_id"].n_unique() == 1 and it["mesh_path"].to_list() == ["/m/x.glb", "/m/y.glb", "/m/z.glb"]
    assert pl.read_parquet(tmp_path / "pairs.parquet").height == 3
    (tmp_path / "prompts.csv").write_text("item_id,prompt\nx,a red chair\nw,a red chair\n")
    r = CliRunner().invoke(cli, ["annotate", "pairs", "--renders", str(tmp_path / "renders"), "--prompts", str(tmp_path / "prompts.csv"),
                                 "--out-items", str(tmp_path / "i2.parquet"), "--out", str(tmp_path / "p2.parquet")])
    assert r.exit_code != 0 and "renders/w/meta.json" in r.output


def test_qc_leave_one_out_majority_ignores_tied_others():
    # three annotators, one always contrary: for alice the others (bob, mallory) tie -> no majority
    rows = []
    for i in range(6):
        rows += [(f"p{i}", "global", "a", "alice", 1.0), (f"p{i}", "global", "a", "bob", 1.0), (f"p{i}", "global", "b", "mallory", 1.0)]
    s = qc_report(prefs(rows), min_overlap=3)["annotator_stats"]
    assert s["alice"]["agreement_with_majority"] is None and s["alice"]["overlap_units"] == 0
    assert s["mallory"]["agreement_with_majority"] == 0.0 and s["mallory"]["overlap_units"] == 6


def test_qc_in_a_log_prints_full_width_and_says_when_agreement_cannot_be_measured(tmp_path):
    # the quick path: one annotator per task, long e-mail addresses, output to a file (not a terminal)
    names = [f"annotator-number-{i}@computer-graphics-lab.some-university.example.org" for i in range(3)]
    df = prefs([(f"p{i}", q, "a", names[i % 3], 5.0) for i in range(9) for q in ("global", "local")])
    write_table(df, tmp_path / "prefs.parquet", "preferences")
    r = CliRunner().invoke(cli, ["annotate", "qc", "--preferences", str(tmp_path / "prefs.parquet"), "--json", str(tmp_path / "qc.json")])
    assert r.exit_code == 0, r.output
    for n in names:
        assert n in r.output  # not cut to 80 columns ("annotator-number-0@computer-gr…")
    assert "…" not in r.output and max(len(line) for line in r.output.splitlines()) > 80
    assert "no pair was answered by two or more annotators" in r.output and "--annotators-per-task 3" in r.output
    report = json.loads((tmp_path / "qc.json").read_text())
    assert report["notes"] and "cannot be measured" in report["notes"][0]
    # with overlap there is no such note
    assert qc_report(three_annotators())["notes"] == []
