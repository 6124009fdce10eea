"""Real meshes in the demo's training data (rewardkit.demo.real) and the real-mesh transfer report
(rewardkit.eval.transfer). ../shared/meshes is the real-mesh VALIDATION set: no training mesh may be one of
its files (these tests fail, not skip, when it is missing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import trimesh

from helpers.meshes import SHARED_MESHES
from rewardkit.demo import DemoConfig, RealConfig, generate, label_pairs
from rewardkit.demo import textures as tx
from rewardkit.demo.real import PHOTO_SOURCES, SOURCES, find_objects, find_photos, noun_of
from rewardkit.eval.transfer import make_variants, summarise


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shared_hashes() -> set[str]:
    files = [p for p in SHARED_MESHES.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert len(files) >= 14, f"{SHARED_MESHES}: the real-mesh validation set is missing"
    return {_sha(p) for p in files}


@pytest.fixture(scope="module")
def small_real(tmp_path_factory):
    cfg = DemoConfig(prompts_per_category=1, holdout_per_category=1, categories=("mug",), design="factorial",
                     real=RealConfig(sources=("ycb",), objects=5))
    out = tmp_path_factory.mktemp("real")
    items, cands = generate(cfg, out)
    return items, cands


def test_no_training_mesh_has_the_hash_of_a_validation_mesh(shared_hashes, small_real):
    """Every real-mesh source file the generator can use, and every generated training mesh, differs from
    every file of ../shared/meshes."""
    sources = find_objects(sorted(SOURCES))
    assert len(sources) >= 78
    clash = [str(o.path) for o in sources if _sha(o.path) in shared_hashes]
    assert not clash, f"real-mesh sources that are files of the validation set {SHARED_MESHES}: {clash}"
    items, cands = small_real
    train = items.join(cands.select("item_id", "split"), on="item_id").filter(pl.col("split") == "train")
    assert train.height > 0
    assert not set(train["mesh_sha256"].to_list()) & shared_hashes


def test_the_own_generations_test_trains_on_no_validation_mesh(shared_hashes, tmp_path):
    """tests/test_pipeline.py trains the pipeline's reward models on a lab's "own generations": none of their
    meshes (the originals, referenced where they lie, and the corrupted copies) is a file of ../shared/meshes."""
    from pathlib import Path

    from helpers.own_generations import OWN_PROMPTS, own_generations

    rows = own_generations(tmp_path)
    assert len(rows) == 3 * len(OWN_PROMPTS)
    paths = [Path(r["mesh_path"]) if Path(r["mesh_path"]).is_absolute() else tmp_path / r["mesh_path"] for r in rows]
    assert all(p.is_file() for p in paths)
    assert not [p for p in paths if SHARED_MESHES.resolve() in p.resolve().parents]
    clash = [str(p) for p in paths if _sha(p) in shared_hashes]
    assert not clash, f"own-generation meshes that are files of the validation set {SHARED_MESHES}: {clash}"


def test_the_hash_check_would_catch_a_copied_validation_mesh(shared_hashes):
    duck = SHARED_MESHES / "duck" / "Duck.glb"
    assert _sha(duck) in shared_hashes  # the check above compares real file hashes, so a copy is caught


def test_real_candidates_are_factorial_textured_degraded_and_labelled(small_real):
    items, cands = small_real
    real = cands.filter(pl.col("category") == "ycb")
    assert real["prompt_id"].n_unique() == 5 and set(real["split"]) == {"train"}
    assert real.height == 5 * 3 * 2  # {none + 2 geometry} x {none + 1 texture}
    prompts = items.filter(pl.col("item_id").is_in(real["item_id"].to_list()))["prompt"].unique().to_list()
    assert any("master chef can" in p for p in prompts) and all(p.startswith(("a ", "an ")) for p in prompts)
    # texture state independent of shape state within every real prompt
    for (_,), g in real.group_by("prompt_id"):
        geo = g["geometry_degradation"] != "none"
        tex = g["texture_degradation"] != "none"
        assert (geo & tex).sum() * len(g) == geo.sum() * tex.sum()
    # the noise strengths differ between candidates (several strengths over the objects)
    noisy = real.filter(pl.col("geometry_degradation") == "vertex_noise")["item_id"].to_list()
    assert len({i.split("@")[1].split("+")[0] for i in noisy}) >= 3
    # degraded meshes differ from the clean one in exactly the recorded respect
    path = dict(zip(items["item_id"], items["mesh_path"]))
    clean = trimesh.load(path["ycb-002_master_chef_can-clean"], force="mesh")
    noisy_mesh = trimesh.load(path[next(i for i in noisy if i.startswith("ycb-002") and "+" not in i)], force="mesh")
    assert np.allclose(clean.extents, noisy_mesh.extents, rtol=0.2) and not np.allclose(
        np.sort(clean.vertices, axis=0), np.sort(noisy_mesh.vertices[: len(clean.vertices)], axis=0))
    pairs = pl.DataFrame({"pair_id": ["p0", "p1"], "item_a": ["ycb-002_master_chef_can-clean"] * 2,
                          "item_b": [noisy[0], real.filter(pl.col("kind") == "texture")["item_id"][0]]})
    prefs = label_pairs(pairs, cands)
    got = {(r["pair_id"], r["question"]): r["label"] for r in prefs.iter_rows(named=True)}
    assert got[("p0", "global")] == "a" and got[("p1", "local")] == "a" and got[("p1", "global")] == "tie"
    assert set(prefs["source"]) == {"synthetic"}


def test_noun_of_drops_ycb_ids():
    assert noun_of("011_banana") == "banana" and noun_of("072-a_toy_airplane") == "toy airplane"


def test_real_config_rejects_bad_values():
    with pytest.raises(ValueError, match="real-mesh source: unknown"):
        RealConfig(sources=("pybullet",))
    with pytest.raises(ValueError, match="missing_part"):
        RealConfig(sources=("ycb",), geometry=("missing_part",))


def _main_tile(path) -> np.ndarray:
    """The main tile (left half) of a demo GLB's texture atlas."""
    mesh = trimesh.load(path, force="mesh")
    return np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))[:, : tx.TILE]


def test_photo_textures_are_recorded_deterministic_and_named_by_their_colour(shared_hashes, tmp_path):
    """Photo-textured scans (generate.real.photos): every photo is licence-recorded and no validation file;
    the prompt's colour word is the clean crop's dominant colour; texture_grey keeps the crop's luminance and
    hue_rotated changes its colour word; the same config gives the same meshes."""
    licences = Path(__file__).resolve().parents[1] / "data" / "real" / "LICENSES.md"
    text = licences.read_text()
    photos = find_photos(sorted(PHOTO_SOURCES))
    assert len(photos) >= 5
    for ph in photos:
        assert ph.path.name in text and _sha(ph.path) not in shared_hashes
    real = RealConfig(sources=("ycb",), objects=4, photos=("skimage",), photo_fraction=1.0,
                      photo_texture=("texture_grey", "hue_rotated"))
    cfg = DemoConfig(prompts_per_category=0, holdout_per_category=0, categories=("mug",), real=real)
    items, cands = generate(cfg, tmp_path / "a")
    assert set(cands["material"]) == {"photo"} and cands["prompt_id"].n_unique() == 4
    assert set(cands["texture_degradation"]) == {"none", "texture_grey", "hue_rotated"}
    path = dict(zip(items["item_id"], items["mesh_path"]))
    prompt = dict(zip(items["item_id"], items["prompt"]))
    for r in cands.filter(pl.col("degradation") == "clean").iter_rows(named=True):
        word = tx.dominant_colour(_main_tile(path[r["item_id"]]))
        assert word == r["colour"] and prompt[r["item_id"]].split()[1] == word
        clean = _main_tile(path[r["item_id"]])
        for deg in ("texture_grey", "hue_rotated"):
            got = _main_tile(path[f"{r['prompt_id']}-{deg}"])
            if deg == "texture_grey":
                assert np.abs(got.astype(int) - tx.grey(clean).astype(int)).max() <= 1
            else:
                assert tx.dominant_colour(got) != word
    items2, _ = generate(cfg, tmp_path / "b")
    assert items2["mesh_sha256"].to_list() == items["mesh_sha256"].to_list()
    assert not set(items["mesh_sha256"].to_list()) & shared_hashes


def test_dominant_colour_names_palette_colours_and_not_grey():
    for word, rgb in tx.COLOURS.items():
        assert tx.dominant_colour(tx.flat_tile(rgb)) == word
    assert tx.dominant_colour(tx.flat_tile((128, 128, 128))) is None
    assert tx.dominant_colour(tx.grey(tx.pattern_tile("striped", "red", np.random.default_rng(0)))) is None


def test_transfer_variants_change_only_what_they_name(tmp_path):
    subset = tmp_path / "meshes"  # two of the validation meshes (one textured, one without colour): a fast test
    subset.mkdir()
    assets = [a for a in json.loads((SHARED_MESHES / "manifest.json").read_text()) if a["id"] in ("duck", "suzanne")]
    (subset / "manifest.json").write_text(json.dumps(assets))
    for a in assets:
        (subset / a["id"]).symlink_to(SHARED_MESHES / a["id"])
    rows, skipped = make_variants(subset / "manifest.json", tmp_path / "out", noise=(0.01, 0.03), hue=120)
    by = {(r["id"], r["variant"]): r["mesh"] for r in rows}
    assert {v for _, v in by} == {"original", "vertex_noise@0.01", "vertex_noise@0.03", "texture_grey", "hue_rotated"}
    assert ("suzanne", "texture_grey") not in by and any(s["id"] == "suzanne" for s in skipped)  # no colour
    orig = trimesh.load(by[("duck", "original")], force="mesh")
    grey = trimesh.load(by[("duck", "texture_grey")], force="mesh")
    n1 = trimesh.load(by[("duck", "vertex_noise@0.01")], force="mesh")
    n3 = trimesh.load(by[("duck", "vertex_noise@0.03")], force="mesh")
    assert np.array_equal(orig.vertices, grey.vertices)
    d1, d3 = (np.abs(m.vertices - orig.vertices).mean() for m in (n1, n3))
    assert 0 < d1 < d3
    # summarise: ties count half, global's texture shift is reported
    scores = {("a", "original"): {"global": 1.0, "local": 1.0}, ("a", "vertex_noise@0.01"): {"global": 0.5, "local": 1.0},
              ("a", "texture_grey"): {"global": 1.0, "local": 2.0}}
    s = summarise(scores)
    assert s["global"]["per_degradation"]["vertex_noise@0.01"]["original_wins"] == 1.0
    assert s["local"]["per_degradation"]["texture_grey"]["original_wins"] == 0.0
    assert s["local"]["other"] == 0.5 and s["global"]["max_abs_shift_under_texture_changes"] == 0.0
