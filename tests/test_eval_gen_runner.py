"""``rewardkit eval-gen`` end to end on the real meshes of ../shared/meshes (required: fails, not skips, when
they are missing): the meshes as "generations" against renders of the same meshes as references give KD and
FD of identical sets (KD = the closed form of the unbiased estimate, FD = 0), degraded copies give clearly
larger values; broken and missing files are reported and excluded; features are cached per render; the
protocol is a strict config recorded in the result. Extractors are random-init models saved in the real file
formats (torchvision Inception-V3, Hugging Face DINOv2, open_clip), labelled as such in the result."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from safetensors.numpy import load_file
from click.testing import CliRunner
from helpers.meshes import SHARED_MESHES, manifest

from rewardkit.cli import main
from rewardkit.config import ConfigError
from rewardkit.eval.generation.protocol import (
    MME3DR_CATEGORIES,
    EvalGenConfig,
    category_slug,
    load_eval_config,
    process_prompt,
    protocol_record,
)
from rewardkit.eval.generation.metrics import identical_sets_kd
from rewardkit.render import open_view

VIEWS, SIZE, N_VIEWS = "orbit8", 96, 8
CATS = list(MME3DR_CATEGORIES)


def test_protocol_is_a_strict_config_with_recorded_provenance(tmp_path):
    cfg = EvalGenConfig()
    assert (cfg.views, cfg.size, cfg.shading, cfg.clip.arch, cfg.clip.prompt) == (
        "toys4k24", 512, "textured", "ViT-B-32", "first_sentence")
    rec = protocol_record(cfg)
    assert rec["cameras"]["name"] == "toys4k24" and len(rec["cameras"]["azimuths"]) == 24
    assert rec["cameras"]["radius"] == 2.0 and rec["cameras"]["yfov_deg"] == 40.0
    for key in ("views", "size", "shading", "background", "clip", "clip.prompt", "kd"):
        assert "not pinned by the paper" in rec["provenance"][key], key
    assert "Table 4" in rec["provenance"]["metrics"]
    with pytest.raises(ConfigError, match="did you mean 'shading'"):
        load_eval_config(None, ["shadin=untextured"])
    with pytest.raises(ConfigError, match="'textured', 'untextured'"):
        load_eval_config(None, ["shading=flat"])
    with pytest.raises(ConfigError, match="unknown camera protocol"):
        load_eval_config(None, ["views=orbit7"])
    f = tmp_path / "p.yaml"
    f.write_text("eval_gen:\n  views: '0:20,180:20'\n  size: 64\n  clip: {prompt: full}\n")
    cfg = load_eval_config(f, ["kd.subsets=3"], **{"inception.weights": "x.pth"})
    assert (cfg.views, cfg.size, cfg.clip.prompt, cfg.kd.subsets, cfg.inception.weights) == (
        "0:20,180:20", 64, "full", 3, "x.pth")
    assert process_prompt("A red chair. It has four legs.", "first_sentence") == "A red chair"
    assert process_prompt("A red chair. It has four legs.", "full") == "A red chair. It has four legs."
    assert category_slug("Spatial & Structural Geometry") == "spatial_structural_geometry"
    assert category_slug("World-Knowledge Rare Objects") == "world_knowledge_rare_objects"


def test_rgba_reference_images_are_composited_over_the_background(tmp_path):
    import PIL.Image

    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200
    a[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    PIL.Image.fromarray(a, "RGBA").save(tmp_path / "v.png")
    im = np.asarray(open_view(tmp_path / "v.png", background=(10, 20, 30)))
    assert im.shape == (4, 4, 3) and im[0, 0].tolist() == [200, 0, 0] and im[3, 3].tolist() == [10, 20, 30]


@pytest.fixture(scope="module")
def extractors(tmp_path_factory):
    from rewardkit.eval.generation.random_init import write_random_init_extractors

    return write_random_init_extractors(tmp_path_factory.mktemp("extractors"), inception_size=139)


def _assets():
    assert (SHARED_MESHES / "manifest.json").is_file(), f"{SHARED_MESHES} is missing: the real-mesh tests need it"
    return manifest()


def _prompt_set(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _degrade(src: Path, dst: Path, seed: int) -> None:
    """A generator's worse copy: squashed to half its height, vertex noise of 5% of the object's size."""
    mesh = trimesh.load(src, force="mesh")
    rng = np.random.default_rng(seed)
    mesh.apply_transform(np.diag([1.0, 0.5, 1.0, 1.0]))
    mesh.vertices = mesh.vertices + rng.normal(0, 0.05 * mesh.scale, size=mesh.vertices.shape)
    material = getattr(mesh.visual, "material", None)
    for attr in ("image", "baseColorTexture", "metallicRoughnessTexture", "normalTexture", "emissiveTexture",
                 "occlusionTexture"):  # trimesh's merged atlas can exceed max_texture_pixels
        image = getattr(material, attr, None)
        if image is not None and max(image.size) > 1024:
            setattr(material, attr, image.resize((1024, max(1, 1024 * image.size[1] // image.size[0]))))
    dst.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(dst)


def _args(ext: dict, *more: str) -> list[str]:
    return ["--set", f"views={VIEWS}", "--set", f"size={SIZE}", "--set", "kd.subsets=1",
            "--set", "kd.subset_size=100000",  # one subset of all rows: the whole-set estimate
            "--inception", ext["inception"]["weights"], "--set", f"inception.input_size={ext['inception']['input_size']}",
            "--dinov2", ext["dinov2"]["weights"], "--set", f"dinov2.input_size={ext['dinov2']['input_size']}",
            "--clip-weights", ext["clip"]["weights"], "--clip-arch", ext["clip"]["arch"], *more]


def _features(out: Path, fingerprint: str, kind: str) -> np.ndarray:
    """The cached features of every render folder of ``kind``, read back through the feature cache's API."""
    from rewardkit.eval.generation.features import decoding
    from rewardkit.render import view_files
    from rewardkit.render.features import FeatureCache, views_key

    res = json.loads((out / "result.json").read_text())
    mode = res["protocol"]["render_mode"]
    dirs = sorted(p.parent for p in (out / "renders" / kind).glob("*/meta.json"))
    cache = FeatureCache(out / "cache", fingerprint)
    files = [view_files(d, mode) for d in dirs]
    return np.concatenate([cache.get(views_key(f, decoding(res["protocol"]["background"])), len(f))
                           for f in files]).astype(np.float64)


@pytest.mark.slow
def test_eval_gen_on_the_shared_real_meshes(tmp_path, extractors):
    assets = _assets()
    runner = CliRunner()
    # the references: renders of the real meshes with the evaluation's protocol (`rewardkit render`)
    refs = tmp_path / "refs"
    meshes = [str(SHARED_MESHES / a["id"] / a["mesh"]) for a in assets]
    r = runner.invoke(main, ["render", *meshes, "--out", str(refs), "--protocol", VIEWS, "--size", str(SIZE),
                             "--modes", "rgb"])
    assert r.exit_code == 0, r.output
    rows = [{"object_id": Path(a["mesh"]).stem, "prompt": a["prompt"] + ". A real asset.",
             "category": MME3DR_CATEGORIES[CATS[i % 5]], "generation": f"{a['id']}/{a['mesh']}"}
            for i, a in enumerate(assets)]
    prompts = _prompt_set(tmp_path / "prompts.csv", rows)

    # 1. identical sets: the meshes themselves as the generations
    out = tmp_path / "identical"
    r = runner.invoke(main, ["eval-gen", str(SHARED_MESHES), "--prompts", str(prompts), "--reference-renders",
                             str(refs), "--out", str(out), *_args(extractors)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "result.json").read_text())
    m = res["metrics"]["overall"]
    n = len(assets)
    assert res["inputs"] == {**res["inputs"], "objects": n, "evaluated": n, "excluded_count": 0, "excluded": []}
    assert m["generated_views"] == m["reference_views"] == N_VIEWS * n
    for short, kind in (("incep", "inception"), ("dinov2", "dinov2")):
        fp = res["extractors"][kind]["fingerprint"]
        gen, ref = _features(out, fp, "generated"), np.concatenate(
            [load_file(p)["features"] for p in sorted((out / "cache" / fp[:32]).rglob("*.safetensors"))])
        assert len(gen) == N_VIEWS * n and len(ref) == N_VIEWS * n  # references were rendered byte-identically: one cache entry
        expected = 100 * identical_sets_kd(gen)  # -(2/n)(mean k(x,x) - mean k(x,x')), not 0
        assert expected < 0 and m[f"kd_{short}_x100"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        spread = float(np.trace(np.cov(gen, rowvar=False)))
        assert abs(m[f"fd_{short}"]) <= 1e-6 * spread, (short, m[f"fd_{short}"], spread)
    # the record: protocol, extractors labelled random-init, the prompt handling
    assert res["protocol"]["cameras"]["name"] == VIEWS and res["protocol"]["size"] == SIZE
    assert res["random_init_extractors"] is True and len(res["labels"]) == 3
    assert all(e["random_init"] and "RANDOM-INIT" in e["label"] for e in res["extractors"].values())
    assert res["protocol"]["clip"]["prompt"] == "first_sentence" and isinstance(m["clip_score"], float)
    assert set(res["metrics"]["per_category"]) == set(CATS)
    assert sum(c["objects"] for c in res["metrics"]["per_category"].values()) == n
    assert res["inputs"]["categories_not_in_mme3dr"] == []
    assert (out / "result.png").stat().st_size > 5000

    # 2. a re-run: every render folder reused, every feature from the cache, the same figures
    r = runner.invoke(main, ["eval-gen", str(SHARED_MESHES), "--prompts", str(prompts), "--reference-renders",
                             str(refs), "--out", str(out), *_args(extractors)])
    assert r.exit_code == 0, r.output
    again = json.loads((out / "result.json").read_text())
    assert again["timing"]["rendered_now"] == 0 and again["timing"]["feature_cache_misses"] == 0
    assert again["metrics"] == res["metrics"]

    # 3. degraded copies as the generations, plus a broken and a missing one: clearly larger KD and FD
    gen = tmp_path / "degraded"
    for i, a in enumerate(assets):
        _degrade(SHARED_MESHES / a["id"] / a["mesh"], gen / f"{Path(a['mesh']).stem}.glb", i)
    (gen / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00 this is not a mesh")
    rows2 = [{k: v for k, v in row.items() if k != "generation"} for row in rows]
    rows2 += [{"object_id": "broken", "prompt": "a broken mesh", "category": CATS[0]},
              {"object_id": "missing", "prompt": "a mesh nobody wrote", "category": CATS[1]}]
    refs2 = tmp_path / "refs2"
    refs2.mkdir()
    for row in rows2:  # reference folders named by object id (the missing generation has one too)
        src = refs / row["object_id"] if (refs / row["object_id"]).is_dir() else refs / rows[0]["object_id"]
        shutil.copytree(src, refs2 / row["object_id"])
    out2 = tmp_path / "degraded-out"
    r = runner.invoke(main, ["eval-gen", str(gen), "--prompts", str(_prompt_set(tmp_path / "p2.csv", rows2)),
                             "--reference-renders", str(refs2), "--out", str(out2), *_args(extractors)])
    assert r.exit_code == 1, r.output  # some inputs failed, the rest evaluated
    assert "broken" in r.output and "missing" in r.output
    res2 = json.loads((out2 / "result.json").read_text())
    excluded = {e["object_id"]: e for e in res2["inputs"]["excluded"]}
    assert set(excluded) == {"broken", "missing"} and res2["inputs"]["evaluated"] == n
    assert excluded["missing"]["what"] == "generation" and "not found" in excluded["missing"]["error"]
    m2 = res2["metrics"]["overall"]
    assert m2["generated_views"] == m2["reference_views"] == N_VIEWS * n  # the excluded objects' references are left out
    for short in ("incep", "dinov2"):
        print(f"{short}: KD x100 identical {m[f'kd_{short}_x100']:.4g} vs degraded {m2[f'kd_{short}_x100']:.4g}; "
              f"FD identical {m[f'fd_{short}']:.3g} vs degraded {m2[f'fd_{short}']:.4g}")
    # measured (random-init extractors, 14 meshes x 8 views at 96 px): KD x100 identical -0.041 / degraded 0.080
    # (Inception), -1.24 / 2.55 (DINOv2); FD 0 / 1.18 and 0 / 2.07
    for short in ("incep", "dinov2"):
        ident = m[f"kd_{short}_x100"]
        # positive, and above the identical sets' value by more than twice that value's (bias) magnitude
        assert m2[f"kd_{short}_x100"] > 0 and m2[f"kd_{short}_x100"] - ident > 2 * abs(ident), (short, m2, m)
        assert m2[f"fd_{short}"] > 1e3 * max(abs(m[f"fd_{short}"]), 1e-9), (short, m2, m)
    assert res2["timing"]["feature_cache_hits"] == 0  # another out folder: another cache


def test_eval_gen_usage_errors_exit_2(tmp_path, extractors):
    runner = CliRunner()
    gen = tmp_path / "gen"
    gen.mkdir()
    refs = tmp_path / "refs"
    refs.mkdir()
    base = ["eval-gen", str(gen), "--reference-renders", str(refs), "--out", str(tmp_path / "o")]
    r = runner.invoke(main, [*base, "--prompts", str(tmp_path / "nope.csv"), *_args(extractors)])
    assert r.exit_code == 2 and "nope.csv: prompt set not found" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("name,text\na,b\n")
    r = runner.invoke(main, [*base, "--prompts", str(bad), *_args(extractors)])
    assert r.exit_code == 2 and "needs columns object_id (or id) and prompt" in r.output
    ok = _prompt_set(tmp_path / "ok.csv", [{"object_id": "a", "prompt": "a cube"}])
    r = runner.invoke(main, [*base, "--prompts", str(ok), "--set", "kd.subsetz=3"])
    assert r.exit_code == 2 and "did you mean 'kd.subsets'" in r.output
    r = runner.invoke(main, [*base, "--prompts", str(ok)])  # no extractor weights
    assert r.exit_code == 2 and "no extractor configured" in r.output
    r = runner.invoke(main, [*base, "--prompts", str(ok), "--inception", str(tmp_path / "missing.pth")])
    assert r.exit_code == 2 and "missing.pth: weights file not found" in r.output
    r = runner.invoke(main, ["eval-gen", str(gen), "--prompts", str(ok), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "exactly one of --reference-meshes and --reference-renders" in r.output
    esc = _prompt_set(tmp_path / "esc.csv", [{"object_id": "a", "prompt": "a cube", "generation": "../x.glb"}])
    r = runner.invoke(main, [*base, "--prompts", str(esc), *_args(extractors)])
    assert r.exit_code == 2 and "lies outside" in r.output


@pytest.mark.slow
def test_reference_meshes_shared_by_objects_are_one_set_member_each(tmp_path, extractors):
    from rewardkit.eval.generation.inputs import read_prompt_set
    from rewardkit.eval.generation.runner import evaluate_generations

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    trimesh.creation.box((1, 1, 1)).export(ref / "box.ply")
    trimesh.creation.icosphere(2).export(ref / "ball.ply")
    rows = []
    for i in range(3):
        trimesh.creation.box((1, 0.5 + 0.2 * i, 1)).export(gen / f"b{i}.ply")
        rows.append({"object_id": f"b{i}", "prompt": "a box", "category": "Spatial & Structural Geometry",
                     "reference": "box.ply"})
    trimesh.creation.icosphere(1).export(gen / "s0.ply")
    rows.append({"object_id": "s0", "prompt": "a ball", "category": "Biological & Organic Shapes", "reference": "ball.ply"})
    objects = read_prompt_set(_prompt_set(tmp_path / "p.csv", rows), gen, reference_meshes=ref)
    cfg = EvalGenConfig.from_dict({"views": "orbit4", "size": 64, "shading": "untextured", "kd": {"subsets": 5},
                                   **{k: v for k, v in extractors.items()}})
    res = evaluate_generations(objects, cfg, tmp_path / "out", progress=False).data
    m = res["metrics"]
    assert res["inputs"]["references"] == 2 and m["overall"]["reference_views"] == 2 * 4
    assert m["overall"]["generated_views"] == 4 * 4
    assert m["per_category"]["spatial_structural_geometry"]["references"] == 1
    assert m["per_category"]["spatial_structural_geometry"]["generated_views"] == 3 * 4
    assert m["per_category"]["biological_organic_shapes"]["objects"] == 1
    assert res["protocol"]["render_mode"] == "geometry" and res["protocol"]["shading"] == "untextured"
    assert m["overall"]["fd_incep"] > 0 and m["overall"]["kd_dinov2_x100"] == m["overall"]["kd_dinov2_x100"]
