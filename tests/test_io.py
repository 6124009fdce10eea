"""rewardkit.io: formats, flattening, materials, normalization and every error case."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import trimesh

from helpers.meshes import checker_image, textured_box, vertex_colored_sphere, write_all_formats
from rewardkit.io import LoadOptions, MeshError, from_trimesh, load_mesh, sha256_file


@pytest.fixture(scope="module")
def box_files(tmp_path_factory):
    return write_all_formats(textured_box(), tmp_path_factory.mktemp("formats"))


@pytest.mark.parametrize("fmt", ["glb", "gltf", "obj", "ply", "stl", "off"])
def test_every_format_loads_and_is_normalized(box_files, fmt):
    m = load_mesh(box_files[fmt])
    assert m.n_faces == 12
    lo, hi = m.scene.bounds
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-6)  # centred
    np.testing.assert_allclose((hi - lo).max(), 1.0, atol=1e-6)  # longest side 1
    np.testing.assert_allclose(hi - lo, [1.0, 0.6, 0.4], atol=1e-6)  # proportions kept, +Y stays up
    assert m.sha256 == sha256_file(box_files[fmt])
    assert m.normalization["scale"] == pytest.approx(1.0)


@pytest.mark.parametrize("fmt", ["glb", "gltf", "obj"])
def test_texture_image_is_kept(box_files, fmt):
    g = load_mesh(box_files[fmt]).geometries[0]
    assert isinstance(g.visual, trimesh.visual.TextureVisuals)
    image = getattr(g.visual.material, "baseColorTexture", None) or getattr(g.visual.material, "image", None)
    assert image is not None
    assert np.asarray(image.convert("RGB")).reshape(-1, 3).std(axis=0).max() > 50  # the checkerboard survived


def test_vertex_colours_are_kept(tmp_path):
    path = tmp_path / "sphere.ply"
    vertex_colored_sphere().export(path)
    g = load_mesh(path).geometries[0]
    assert g.visual.kind == "vertex"
    assert np.ptp(g.visual.vertex_colors[:, 0]) > 200


def test_scene_is_flattened_with_node_transforms(tmp_path):
    scene = trimesh.Scene()
    a = trimesh.creation.box(extents=(1, 1, 1))
    scene.add_geometry(a, geom_name="a", transform=trimesh.transformations.translation_matrix([-2, 0, 0]))
    scene.add_geometry(a.copy(), geom_name="b", transform=trimesh.transformations.translation_matrix([2, 0, 0]))
    path = tmp_path / "two.glb"
    scene.export(path)
    m = load_mesh(path)
    assert len(m.geometries) == 2
    assert all(np.allclose(m.scene.graph[n][0], np.eye(4)) for n in m.scene.graph.nodes_geometry)
    centers = sorted(g.bounds.mean(axis=0)[0] for g in m.geometries)
    # source span is x in [-2.5, 2.5] -> scaled by 1/5: part centres at -0.4 and 0.4
    np.testing.assert_allclose(centers, [-0.4, 0.4], atol=1e-6)


@pytest.mark.parametrize(
    "up, expected",
    [("+y", [0.2, 1.0, 0.4]), ("+z", [0.2, 0.4, 1.0]), ("-z", [0.2, 0.4, 1.0]), ("+x", [1.0, 0.2, 0.4])],
)
def test_up_axis_is_rotated_onto_y(tmp_path, up, expected):
    # a tall box along +Y in the source; the extents after rotation show which axis became up
    path = tmp_path / "tall.stl"
    trimesh.creation.box(extents=(0.2, 1.0, 0.4)).export(path)
    m = load_mesh(path, up=up)
    np.testing.assert_allclose(np.ptp(m.scene.bounds, axis=0), expected, atol=1e-6)


def test_z_up_source_stands_up(tmp_path):
    cone = trimesh.creation.cone(radius=0.2, height=1.0)  # apex at +Z
    path = tmp_path / "cone.stl"
    cone.export(path)
    m = load_mesh(path, up="+z")
    apex = m.geometries[0].vertices[m.geometries[0].vertices[:, 1].argmax()]
    assert apex[1] == pytest.approx(0.5) and abs(apex[0]) < 1e-6 and abs(apex[2]) < 1e-6


def test_missing_file(tmp_path):
    with pytest.raises(MeshError, match="file not found") as e:
        load_mesh(tmp_path / "nope.glb")
    assert e.value.path.endswith("nope.glb")


def test_unknown_format(tmp_path):
    p = tmp_path / "mesh.fbx"
    p.write_bytes(b"x")
    with pytest.raises(MeshError, match=r"mesh\.fbx: unknown format '\.fbx'"):
        load_mesh(p)


def test_corrupt_file(tmp_path):
    p = tmp_path / "broken.glb"
    p.write_bytes(b"glTF\x02\x00\x00\x00garbage")
    with pytest.raises(MeshError, match="broken.glb: cannot parse GLB"):
        load_mesh(p)


def test_no_faces(tmp_path):
    p = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(p)
    with pytest.raises(MeshError, match="points.ply: no faces"):
        load_mesh(p)
    p2 = tmp_path / "empty.obj"
    p2.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshError, match="empty.obj: no faces"):
        load_mesh(p2)


def test_non_finite_vertices(tmp_path):
    p = tmp_path / "nan.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 0 nan 0\nf 1 2 3\n")
    with pytest.raises(MeshError, match="nan.obj: non-finite vertex"):
        load_mesh(p)


def test_face_limit(tmp_path):
    p = tmp_path / "sphere.stl"
    trimesh.creation.icosphere(subdivisions=3).export(p)  # 1280 faces
    with pytest.raises(MeshError, match="1280 faces, more than the limit of 1000"):
        load_mesh(p, max_faces=1000)
    assert load_mesh(p, options=LoadOptions(max_faces=2000)).n_faces == 1280


def test_bad_up_axis(tmp_path):
    p = tmp_path / "b.stl"
    trimesh.creation.box().export(p)
    with pytest.raises(MeshError, match="invalid up axis"):
        load_mesh(p, up="y")


def test_missing_texture_image_is_a_warning(tmp_path, box_files):
    folder = tmp_path / "obj"
    folder.mkdir()
    for name in ("mesh.obj", "mesh.mtl"):
        (folder / name).write_bytes(box_files["obj"].with_name(name).read_bytes())
    m = load_mesh(folder / "mesh.obj")  # material_0.png is not there
    assert any("material_0.png" in w and "not found" in w for w in m.warnings)
    assert m.n_faces == 12


def test_missing_mtl_is_a_warning(tmp_path, box_files):
    p = tmp_path / "lonely.obj"
    p.write_bytes(box_files["obj"].read_bytes())  # names mesh.mtl, which is not copied
    m = load_mesh(p)
    assert any("mesh.mtl" in w and "not found" in w for w in m.warnings)
    assert m.n_faces == 12


def test_from_trimesh_in_memory():
    m = from_trimesh(trimesh.creation.box(extents=(4, 2, 2)))
    np.testing.assert_allclose(np.ptp(m.scene.bounds, axis=0), [1.0, 0.5, 0.5])
    assert len(m.sha256) == 64
    assert from_trimesh(trimesh.creation.box(extents=(4, 2, 2))).sha256 == m.sha256


def test_checker_image_helper_is_two_coloured():
    assert len(np.unique(np.asarray(checker_image()).reshape(-1, 3), axis=0)) == 2
    assert isinstance(checker_image(), PIL.Image.Image)
