"""rewardkit.render: real offscreen renders (pyrender on EGL) of meshes built in the tests."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage
import trimesh
from click.testing import CliRunner

from helpers.meshes import checker_image, textured_box, write_all_formats
from rewardkit.cli import main
from rewardkit.io import load_mesh
from rewardkit.render import (
    PRESETS,
    RenderConfig,
    RenderFolderError,
    Renderer,
    get_protocol,
    grid_shape,
    load_views,
    make_grid,
    read_meta,
    render_batch,
    render_to_dir,
)

SIZE = 96


@pytest.fixture(scope="module")
def renderer():
    with Renderer(size=SIZE) as r:
        yield r


@pytest.fixture(scope="module")
def box_files(tmp_path_factory):
    return write_all_formats(textured_box(), tmp_path_factory.mktemp("formats"))


def _proto(name="orbit6"):
    return get_protocol(name, size=SIZE)


def test_protocol_presets():
    p = PRESETS["orbit6"]
    assert p.azimuths == (0, 60, 120, 180, 240, 300) and set(p.elevations) == {20.0}
    assert (p.radius, p.yfov_deg, p.size, p.version) == (2.0, 40.0, 512, 1)
    assert get_protocol("orbit4").n_views == 4 and get_protocol("orbit8").n_views == 8
    explicit = get_protocol("0:20,90:-10")
    assert explicit.azimuths == (0.0, 90.0) and explicit.elevations == (20.0, -10.0)
    assert get_protocol([(0, 10)], size=64).size == 64
    for pose, az in zip(p.camera_poses(), p.azimuths):
        eye = pose[:3, 3]
        assert np.linalg.norm(eye) == pytest.approx(2.0)
        assert np.degrees(np.arcsin(eye[1] / 2.0)) == pytest.approx(20.0)
        assert np.degrees(np.arctan2(eye[0], eye[2])) % 360 == pytest.approx(az, abs=1e-6)
        np.testing.assert_allclose(-pose[:3, 2], -eye / 2.0, atol=1e-9)  # looks at the origin
    with pytest.raises(ValueError, match="unknown camera protocol"):
        get_protocol("orbit5")
    with pytest.raises(ValueError, match="cannot parse camera list"):
        get_protocol("0:20:3")


@pytest.mark.parametrize("fmt", ["glb", "gltf", "obj", "ply", "stl", "off"])
def test_every_format_renders_non_empty_and_centred(renderer, box_files, fmt):
    views = renderer.render(box_files[fmt], _proto("orbit4"), modes=("rgb", "mask"))
    for rgb, mask in zip(views["rgb"], views["mask"]):
        assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE)
        covered = mask > 0
        assert 0.05 < covered.mean() < 0.8
        ys, xs = np.nonzero(covered)
        # the object is centred: its silhouette's bounding-box centre is near the image centre
        assert abs((xs.min() + xs.max()) / 2 - SIZE / 2) < SIZE * 0.08
        assert abs((ys.min() + ys.max()) / 2 - SIZE / 2) < SIZE * 0.12
        # background is white away from the silhouette (edge pixels are anti-aliased)
        near = scipy.ndimage.binary_dilation(covered, iterations=2)
        assert (rgb[~near] == 255).all()


def test_different_azimuths_differ(renderer):
    mesh = load_mesh_obj(trimesh.creation.box(extents=(1.0, 0.5, 0.2)))
    views = renderer.render(mesh, _proto(), modes=("geometry",))["geometry"]
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            if (j - i) == 3:  # opposite views of a symmetric box can coincide
                continue
            assert not np.array_equal(views[i], views[j]), (i, j)


def load_mesh_obj(obj):
    from rewardkit.io import from_trimesh

    return from_trimesh(obj)


def test_geometry_ignores_texture_but_rgb_does_not(renderer, tmp_path):
    a = textured_box(checker_image())
    b = textured_box(PIL.Image.new("RGB", (64, 64), (20, 200, 20)))
    pa, pb = tmp_path / "a.glb", tmp_path / "b.glb"
    a.export(pa)
    b.export(pb)
    va = renderer.render(pa, _proto(), modes=("rgb", "geometry", "normal", "mask"))
    vb = renderer.render(pb, _proto(), modes=("rgb", "geometry", "normal", "mask"))
    for mode in ("geometry", "normal", "mask"):
        for x, y in zip(va[mode], vb[mode]):
            np.testing.assert_array_equal(x, y)
    assert all(np.abs(x.astype(int) - y.astype(int)).mean() > 10 for x, y in zip(va["rgb"], vb["rgb"]))
    # the green box is green and the geometry render is grey
    green = vb["rgb"][0][vb["mask"][0] > 0].mean(axis=0)
    assert green[1] > green[0] + 60 and green[1] > green[2] + 60
    grey = va["geometry"][0][va["mask"][0] > 0].astype(int)
    assert np.abs(grey[:, 0] - grey[:, 1]).max() <= 2 and np.abs(grey[:, 1] - grey[:, 2]).max() <= 2


def test_normal_mode_encodes_world_normals(renderer):
    mesh = load_mesh_obj(trimesh.creation.box(extents=(1, 1, 1)))
    view = renderer.render(mesh, get_protocol([(0, 0)], size=SIZE), modes=("normal",))["normal"][0]
    centre = view[SIZE // 2, SIZE // 2].astype(float) / 255  # front face, normal +Z -> (0.5, 0.5, 1.0)
    np.testing.assert_allclose(centre, [0.5, 0.5, 1.0], atol=0.02)


def test_background_is_configurable():
    with Renderer(size=64, config=RenderConfig(background=(10, 20, 30))) as r:
        view = r.render(load_mesh_obj(trimesh.creation.icosphere()), get_protocol([(0, 20)], size=64), modes=("rgb",))["rgb"][0]
    assert tuple(view[0, 0]) == (10, 20, 30)


def test_deterministic_byte_identical_pngs(tmp_path, box_files, renderer):
    a = render_to_dir(box_files["glb"], tmp_path / "a", _proto(), ("rgb", "geometry", "normal", "mask"), renderer=renderer)
    b = render_to_dir(box_files["glb"], tmp_path / "b", _proto(), ("rgb", "geometry", "normal", "mask"))  # fresh renderer
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 4 * 6 + 4 + 1
    for rel in files_a:
        if rel.name != "meta.json":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert a.mesh_sha256 == b.mesh_sha256


def test_render_folder_metadata_and_views(tmp_path, box_files, renderer):
    render_to_dir(box_files["obj"], tmp_path / "r", "orbit6", ("rgb", "geometry"), renderer=renderer, size=SIZE)
    meta = read_meta(tmp_path / "r")
    assert meta["protocol"]["name"] == "orbit6" and meta["protocol"]["version"] == 1
    assert meta["protocol"]["size"] == SIZE
    assert meta["mesh_sha256"] == load_mesh(box_files["obj"]).sha256
    assert meta["normalization"]["scale"] == pytest.approx(1.0)
    assert [v["azimuth"] for v in meta["views"]] == [0, 60, 120, 180, 240, 300]
    views = load_views(tmp_path / "r", "rgb")
    assert len(views) == 6 and views[0].size == (SIZE, SIZE) and views[0].mode == "RGB"
    grid = PIL.Image.open(tmp_path / "r" / "grid_rgb.png")
    assert grid.size == (3 * SIZE, 2 * SIZE)
    with pytest.raises(RenderFolderError, match="mode 'normal' was not rendered"):
        load_views(tmp_path / "r", "normal")
    (tmp_path / "r" / "rgb" / "03.png").unlink()
    with pytest.raises(RenderFolderError, match="03.png"):
        load_views(tmp_path / "r", "rgb")
    with pytest.raises(RenderFolderError, match="not a render folder"):
        load_views(tmp_path, "rgb")


def test_grid_tiling():
    assert grid_shape(6) == (2, 3) and grid_shape(4) == (2, 2) and grid_shape(8) == (2, 4) and grid_shape(1) == (1, 1)
    tiles = [np.full((4, 4, 3), i * 40, dtype=np.uint8) for i in range(5)]
    g = np.asarray(make_grid(tiles, cols=3))
    assert g.shape == (8, 12, 3)
    assert g[0, 4, 0] == 40 and g[4, 0, 0] == 120 and g[4, 8, 0] == 255  # last cell is background


def test_batch_renders_the_rest_and_reports_the_broken(tmp_path, box_files):
    broken = tmp_path / "broken.obj"
    broken.write_text("v 0 0 0\n")
    paths = [box_files["glb"], broken, box_files["stl"]]
    summary = render_batch(paths, tmp_path / "out", "orbit4", ("geometry",), size=48, progress=False)
    assert [r["mesh_path"] for r in summary.rendered] == [str(box_files["glb"]), str(box_files["stl"])]
    assert summary.failed == [{"mesh_path": str(broken), "error": "no faces (the file holds no triangle geometry)"}]
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["failed"][0]["mesh_path"].endswith("broken.obj")
    assert "render_seconds" not in on_disk and summary.render_seconds > 0  # no timing in a DVC output's files
    # both files are called mesh.*: folder names are made unique
    dirs = [r["render_dir"] for r in summary.rendered]
    assert len(set(dirs)) == 2 and all(d.startswith(str(tmp_path / "out" / "mesh-")) for d in dirs)
    assert len(load_views(dirs[0], "geometry")) == 4


@pytest.mark.slow
def test_batch_with_workers_matches_single_process(tmp_path, box_files):
    paths = [box_files["glb"], box_files["ply"]]
    names = ["a", "b"]
    render_batch(paths, tmp_path / "one", "orbit4", ("rgb",), size=48, progress=False, names=names)
    render_batch(paths, tmp_path / "two", "orbit4", ("rgb",), size=48, progress=False, names=names, workers=2)
    for n in names:
        for i in range(4):
            assert (tmp_path / "one" / n / "rgb" / f"{i:02d}.png").read_bytes() == (tmp_path / "two" / n / "rgb" / f"{i:02d}.png").read_bytes()


def test_cli_render(tmp_path, box_files):
    broken = tmp_path / "nofaces.off"
    broken.write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    result = CliRunner().invoke(
        main, ["render", str(box_files["glb"]), str(broken), "--out", str(tmp_path / "o"), "--size", "48",
               "--protocol", "orbit4", "--modes", "rgb,mask"],
    )
    assert result.exit_code == 1, result.output
    assert "rendered 1 of 2 meshes" in result.output
    assert "nofaces.off: no faces" in result.output
    assert sorted(p.name for p in (tmp_path / "o" / "mesh").iterdir()) == ["grid_mask.png", "grid_rgb.png", "mask", "meta.json", "rgb"]
    ok = CliRunner().invoke(main, ["render", str(box_files["glb"]), "--out", str(tmp_path / "p"), "--size", "32", "--modes", "geometry"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(main, ["render", str(box_files["glb"]), "--out", str(tmp_path / "q"), "--modes", "depth"])
    assert bad.exit_code == 2 and "unknown modes ['depth']" in bad.output


def test_renderer_reuses_one_context(renderer, box_files):
    ctx = renderer._offscreen._platform
    renderer.render(box_files["glb"], _proto("orbit4"), modes=("rgb",))
    renderer.render(box_files["stl"], _proto("orbit4"), modes=("rgb",))
    assert renderer._offscreen._platform is ctx


@pytest.mark.slow
def test_a_render_folder_is_byte_identical_on_every_run(tmp_path, box_files, monkeypatch):
    """The pipeline's render output is a DVC output: the same meshes must give the same bytes (PNGs,
    meta.json, summary.json), run after run, wherever the checkout is (relative paths, as the stage uses)."""
    import hashlib
    import shutil

    digests = []
    for clone in ("a", "b"):
        root = tmp_path / clone
        (root / "meshes").mkdir(parents=True)
        shutil.copy(box_files["glb"], root / "meshes" / "box.glb")
        monkeypatch.chdir(root)
        render_batch(["meshes/box.glb"], "renders", "orbit4", ("rgb", "geometry"), size=48, progress=False)
        digests.append({p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((root / "renders").rglob("*")) if p.is_file()})
    assert len(digests[0]) >= 10 and "renders/summary.json" in digests[0]
    assert digests[0] == digests[1]
