"""Scorers from the Hugging Face Hub, offline: a pre-populated Hub cache (the layout huggingface_hub writes:
``models--org--name/{blobs,refs,snapshots}``), ``HF_HUB_OFFLINE=1``, then ``load_scorer("org/name")``,
``Scorer.from_pretrained(..., revision=...)`` and ``rewardkit score --scorer org/name`` in a fresh process
(huggingface_hub reads its cache and offline settings at import). The model card's front matter is parsed
with huggingface_hub's own ModelCard."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.scoring import mesh_files, scorer_set_dir

ROOT = Path(__file__).parents[1]


def populate_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put ``folder``'s files into ``cache`` as huggingface_hub stores a downloaded snapshot: content-addressed
    blobs, ``snapshots/<commit>/`` symlinks to them, and ``refs/<name>`` files holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for r in refs:
        (repo / "refs" / r).write_text(commit)
    return snap


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf-home"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_load_scorer_from_an_offline_hub_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "org/..." must not be a local folder by accident
    cache = tmp_path / "hub"
    src = scorer_set_dir()
    populate_hub_cache(cache, "rk-org/tiny-set", src, "a" * 40)
    populate_hub_cache(cache, "rk-org/tiny-global", src / "global", "b" * 40, refs=("main", "v1"))
    box = mesh_files()["red_box"]
    script = textwrap.dedent(f"""
        import json
        from rewardkit.scoring import Scorer, ScorerSet, load_scorer, score_meshes
        from rewardkit.scoring.errors import ScorerError
        out = {{}}
        s = load_scorer("rk-org/tiny-set", device="cpu")
        local = load_scorer({str(src)!r}, device="cpu")
        out["set"] = [isinstance(s, ScorerSet), s.names(), s.source]
        out["scores"] = score_meshes([{str(box)!r}], "a red box", s)[0].scores
        out["local"] = score_meshes([{str(box)!r}], "a red box", local)[0].scores
        g = Scorer.from_pretrained("rk-org/tiny-global", revision="v1", device="cpu")
        out["global"] = [type(g).__name__, g.stage, g.source]
        for bad in [("rk-org/not-cached", None), ("rk-org/tiny-global", "v2")]:
            try:
                load_scorer(bad[0], revision=bad[1], device="cpu")
                out.setdefault("errors", []).append(None)
            except ScorerError as exc:
                out.setdefault("errors", []).append(str(exc))
        print("JSON" + json.dumps(out))
    """)
    p = subprocess.run([sys.executable, "-c", script], env=_env(cache), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("JSON", 1)[1])
    is_set, names, source = out["set"]
    assert is_set and sorted(names) == ["global", "local"]
    assert source.startswith(str(cache)) and ("a" * 40) in source  # loaded from the cached snapshot
    assert out["scores"] == pytest.approx(out["local"], abs=1e-6)  # the same scorer as the local folder
    assert out["global"][:2] == ["Scorer", "global"] and ("b" * 40) in out["global"][2]
    missing, bad_rev = out["errors"]
    for msg in (missing, bad_rev):
        assert msg is not None and "\n" not in msg and "offline" in msg.lower()
    assert missing.startswith("rk-org/not-cached:") and "v2" in bad_rev

    # the CLI takes the Hub id where it takes a scorer directory
    p = subprocess.run([sys.executable, "-m", "rewardkit", "score", str(box), "-p", "a red box", "--scorer",
                        "rk-org/tiny-set", "--json", "--device", "cpu", "--no-progress"],
                       env=_env(cache), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    floats = _floats(json.loads(p.stdout))
    for v in out["local"].values():  # the global and the local score of the box, as the API gave them
        assert any(abs(v - x) < 1e-4 for x in floats), (v, p.stdout[:2000])

    p = subprocess.run([sys.executable, "-m", "rewardkit", "score", str(box), "-p", "x", "--scorer",
                        "rk-org/not-cached", "--device", "cpu", "--no-progress"],
                       env=_env(cache), capture_output=True, text=True, timeout=240)
    assert p.returncode == 2 and "rk-org/not-cached" in p.stderr and "Traceback" not in p.stderr


def _floats(doc) -> list[float]:
    if isinstance(doc, float):
        return [doc]
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in _floats(v)]
    if isinstance(doc, list):
        return [x for v in doc for x in _floats(v)]
    return []


def test_model_card_front_matter_parses_with_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard

    src = scorer_set_dir()
    for card_path in (src / "README.md", src / "global" / "README.md"):
        card = ModelCard.load(card_path)
        data = card.data.to_dict()
        assert data["library_name"] == "rewardkit" and data["license"] == "apache-2.0"
        assert {"rewardkit", "reward-model", "text-to-3d"} <= set(data["tags"])
        assert "base_model" not in data  # rk-tiny, random init: no Hub base model
        assert card.text.lstrip().startswith("# ")  # the human-readable card follows the front matter
    assert "global-stage" in ModelCard.load(src / "global" / "README.md").data.tags


def test_base_model_from_the_backbone_weights():
    from huggingface_hub import ModelCardData

    from rewardkit.scoring.hub import base_model_of, card_metadata

    def cfg(name, tag):
        return {"stage": "local", "architecture": {"model": {"backbone": {"name": name, "pretrained": tag}}}}

    # an open_clip release tag with a Hub home (read from open_clip's pretrained table, no download)
    import open_clip

    hub = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"].strip("/")
    assert base_model_of(cfg("ViT-B-32", "laion2b_s34b_b79k")) == hub
    assert base_model_of(cfg("ViT-B-32", "hf-hub:org/clip-x")) == "org/clip-x"
    assert base_model_of(cfg("ViT-B-32", "/weights/open_clip_model.safetensors")) is None
    assert base_model_of(cfg("rk-tiny", None)) is None
    meta = card_metadata([cfg("ViT-B-32", "laion2b_s34b_b79k")], license="mit")
    assert meta["base_model"] == hub and meta["license"] == "mit" and "local-stage" in meta["tags"]
    ModelCardData(**meta)  # accepted by the Hub's card schema


def test_prepare_upload_is_what_load_scorer_reads_back(tmp_path):
    from huggingface_hub import ModelCard

    from rewardkit.scoring import load_scorer
    from rewardkit.scoring.hub import is_hub_id, prepare_upload

    folder = prepare_upload(scorer_set_dir(), tmp_path / "up", license="cc-by-4.0")
    assert ModelCard.load(folder / "README.md").data.license == "cc-by-4.0"
    assert ModelCard.load(folder / "local" / "README.md").data.license == "cc-by-4.0"
    assert sorted(load_scorer(folder, device="cpu").names()) == ["global", "local"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(Exception, match="broken"):
        prepare_upload(broken, tmp_path / "up2")
    assert is_hub_id("org/name") and is_hub_id("Org-1/na.me_2")
    assert not any(is_hub_id(x) for x in ("name", "./org/name", "/abs/org", "org/na--me", "a/b/c", "org/.."))
