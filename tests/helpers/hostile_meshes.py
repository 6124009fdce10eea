"""A corpus of hostile mesh files, generated at test time (nothing committed): the attacks of issue 13
(``mtllib /dev/zero``, FIFOs, paths out of the folder, huge textures, instancing bombs, degenerate and
truncated geometry, huge declared counts, deep glTF JSON, compressed bombs) plus good meshes from
../shared/meshes (referenced in place).

``build_corpus(folder)`` returns :class:`Case` s: ``expect`` is ``"error"`` (the mesh must fail with a
MeshError whose reason contains ``match``) or ``"warning"`` (it loads, with a warning containing
``match``); ``local`` cases need the server's file system (a FIFO, a symlink) and are not uploaded.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

SHARED_MESHES = Path(__file__).resolve().parents[2].parent / "shared" / "meshes"
GOOD_MESHES = [SHARED_MESHES / "duck" / "Duck.glb", SHARED_MESHES / "spot_cow" / "cow.obj",
               SHARED_MESHES / "bunny" / "bunny.ply"]
SECRET = "token=hunter2"


@dataclass
class Case:
    name: str
    path: Path
    expect: str  # "error" | "warning"
    match: str
    local: bool = False


def png_bytes(width: int, height: int, *, garbage: bool = False) -> bytes:
    """A valid grey PNG of any size, built row by row (a 30000^2 one is ~1 MB and takes about a second)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x80" * width
    rows_per_block = max(1, (1 << 22) // len(row))
    block = row * min(rows_per_block, height)
    # a full flush makes each compressed block independent of the ones before: repeat it instead of
    # compressing ~1 GB of identical rows again
    seg = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg_bytes = seg.compress(block) + seg.flush(zlib.Z_FULL_FLUSH)
    n_blocks, rest = divmod(height, len(block) // len(row))
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail_bytes = tail.compress(row * rest) + tail.flush(zlib.Z_FINISH)
    adler = 1
    for _ in range(n_blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    idat = b"\x78\xda" + seg_bytes * n_blocks + tail_bytes + struct.pack(">I", adler & 0xFFFFFFFF)
    if garbage:
        idat = b"\x00garbage" * 8
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def glb_bytes(vertices: np.ndarray, faces: np.ndarray, *, uv: np.ndarray | None = None, image: bytes | None = None,
              instances: int = 1, json_extra: dict | None = None) -> bytes:
    """A GLB written by hand (so tests can make ones no exporter would): one mesh, ``instances`` nodes."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.uint32)
    blobs: list[bytes] = []
    views: list[dict] = []

    def add(data: bytes) -> int:
        offset = sum(len(b) for b in blobs)
        pad = (-len(data)) % 4
        blobs.append(data + b"\x00" * pad)
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data)})
        return len(views) - 1

    accessors = [
        {"bufferView": add(vertices.tobytes()), "componentType": 5126, "count": len(vertices), "type": "VEC3",
         "min": vertices.min(axis=0).tolist() if len(vertices) else [0, 0, 0],
         "max": vertices.max(axis=0).tolist() if len(vertices) else [0, 0, 0]},
        {"bufferView": add(faces.tobytes()), "componentType": 5125, "count": int(faces.size), "type": "SCALAR"},
    ]
    prim: dict = {"attributes": {"POSITION": 0}, "indices": 1, "mode": 4}
    tree: dict = {"asset": {"version": "2.0"}, "scene": 0}
    if uv is not None:
        accessors.append({"bufferView": add(np.ascontiguousarray(uv, dtype=np.float32).tobytes()),
                          "componentType": 5126, "count": len(uv), "type": "VEC2"})
        prim["attributes"]["TEXCOORD_0"] = 2
    if image is not None:
        tree["images"] = [{"bufferView": add(image), "mimeType": "image/png"}]
        tree["textures"] = [{"source": 0}]
        tree["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
        prim["material"] = 0
    tree.update({"accessors": accessors, "bufferViews": views, "meshes": [{"primitives": [prim]}],
                 "nodes": [{"mesh": 0, "translation": [float(i % 30), float(i // 30), 0.0]} for i in range(instances)],
                 "scenes": [{"nodes": list(range(instances))}]})
    binary = b"".join(blobs)
    tree["buffers"] = [{"byteLength": len(binary)}]
    tree.update(json_extra or {})
    js = json.dumps(tree).encode()
    js += b" " * ((-len(js)) % 4)
    body = struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(binary), 0x004E4942) + binary
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


def _quad():
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32)
    return v, f, uv


CUBE_OBJ = "".join(f"v {x} {y} {z}\n" for x in (0, 1) for y in (0, 1) for z in (0, 1)) + (
    "f 1 2 4\nf 1 4 3\nf 5 7 8\nf 5 8 6\nf 1 5 6\nf 1 6 2\nf 3 4 8\nf 3 8 7\nf 1 3 7\nf 1 7 5\nf 2 6 8\nf 2 8 4\n")


def build_corpus(folder: Path) -> list[Case]:
    folder = Path(folder)
    cases: list[Case] = []
    up = folder / "server"  # files "on the server" next to, but outside, each mesh folder
    up.mkdir(parents=True, exist_ok=True)
    (up / "server_config.mtl").write_text(f"newmtl m\nmap_Kd {SECRET}\nbump {SECRET}.png\n")
    (up / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")

    def obj_case(name: str, text: str, expect: str, match: str, local: bool = False, setup=None) -> None:
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        if setup is not None:
            setup(d)
        p = d / f"{name}.obj"
        p.write_text(text)
        cases.append(Case(name, p, expect, match, local))

    outside = "mtllib path outside the mesh folder"
    obj_case("mtllib_dev_zero", "mtllib /dev/zero\n" + CUBE_OBJ, "warning", outside)
    obj_case("mtllib_dev_stdin", "mtllib /dev/stdin\n" + CUBE_OBJ, "warning", outside)
    obj_case("mtllib_abs_existing", f"mtllib {up / 'id_rsa'}\n" + CUBE_OBJ, "warning", outside)
    obj_case("mtllib_abs_missing", f"mtllib {up / 'no_such_key'}\n" + CUBE_OBJ, "warning", outside)
    obj_case("mtllib_dotdot", "mtllib ../server/server_config.mtl\n" + CUBE_OBJ, "warning", outside)
    obj_case("mtllib_fifo", "mtllib fifo.mtl\n" + CUBE_OBJ, "warning", "not a regular file", local=True,
             setup=lambda d: os.mkfifo(d / "fifo.mtl"))
    obj_case("mtllib_abs_fifo", f"mtllib {up / 'server.fifo'}\n" + CUBE_OBJ, "warning", outside,
             setup=lambda d: (up / "server.fifo").exists() or os.mkfifo(up / "server.fifo"))
    obj_case("mtllib_symlink_out", "mtllib link.mtl\n" + CUBE_OBJ, "warning", outside, local=True,
             setup=lambda d: os.symlink(up / "server_config.mtl", d / "link.mtl"))
    obj_case("texture_outside", "mtllib m.mtl\nusemtl m\n" + CUBE_OBJ, "warning", "path outside the mesh folder",
             local=True, setup=lambda d: (d / "m.mtl").write_text("newmtl m\nmap_Kd ../../../../etc/passwd\nbump /dev/zero\n"))
    obj_case("all_equal", "".join("v 1 1 1\n" for _ in range(8)) + CUBE_OBJ.split("\n", 8)[-1], "error", "zero extent")
    obj_case("huge_coords", "v 1.7e308 0 0\nv -1.7e308 0 0\nv 0 1.7e308 0\nf 1 2 3\n", "error", "absurd")
    obj_case("nan_coords", "v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "error", "non-finite")
    obj_case("zero_faces", "v 0 0 0\nv 1 0 0\nv 0 1 0\n", "error", "no faces")
    obj_case("bad_index_obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 1 2 4000\n", "error", "")
    sphere = trimesh.creation.icosphere(subdivisions=3)
    full = trimesh.exchange.obj.export_obj(sphere, include_normals=False)
    body = "\n".join(ln for ln in full.splitlines() if ln[:2] in ("v ", "f "))
    header = f"# Vertices: {len(sphere.vertices)}\n# Faces: {len(sphere.faces)}\n"
    cut = body[: int(len(body) * 0.8)]
    cut = cut[: cut.rfind("\n") + 4]  # ends mid face line
    obj_case("truncated_obj", header + cut, "warning", f"of the {len(sphere.faces)} faces")

    def raw_case(name: str, fname: str, data: bytes, expect: str, match: str, local: bool = False) -> None:
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        p = d / fname
        p.write_bytes(data)
        cases.append(Case(name, p, expect, match, local))

    raw_case("truncated_off", "cube.off", b"OFF\n8 12 0\n" + b"".join(
        f"{x} {y} {z}\n".encode() for x in (0, 1) for y in (0, 1) for z in (0, 1)) + b"3 0 1 3\n",
        "warning", "1 of 12 faces")
    raw_case("huge_counts_off", "huge.off", b"OFF\n1000000000 2000000000 0\n0 0 0\n", "error", "declares")
    raw_case("huge_counts_ply", "huge.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 2000000000\n"
             b"property float x\nproperty float y\nproperty float z\nelement face 1\n"
             b"property list uchar int vertex_indices\nend_header\n" + b"\x00" * 64, "error", "declares")
    raw_case("truncated_ply", "trunc.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 1000\n"
             b"property float x\nproperty float y\nproperty float z\nelement face 10\n"
             b"property list uchar int vertex_indices\nend_header\n" + b"\x00" * 120, "error", "truncated")
    v, f, uv = _quad()
    raw_case("texture_12k", "tex12k.glb", glb_bytes(v, f, uv=uv, image=png_bytes(12000, 12000)), "error",
             "12000x12000")
    raw_case("texture_30k", "tex30k.glb", glb_bytes(v, f, uv=uv, image=png_bytes(30000, 30000)), "error",
             "MeshLimits.max_texture_pixels")
    raw_case("texture_garbage", "badtex.glb", glb_bytes(v, f, uv=uv, image=png_bytes(64, 64, garbage=True)),
             "warning", "cannot be decoded")
    ball = trimesh.creation.icosphere(subdivisions=5)  # 20480 faces
    raw_case("instances_600", "instances.glb", glb_bytes(ball.vertices, ball.faces, instances=600), "error",
             "after instancing")
    raw_case("bad_indices_glb", "badidx.glb", glb_bytes(v, np.array([[0, 1, 5000]]), instances=1), "error",
             "out of range")
    raw_case("deep_json", "deep.gltf", b"[" * 200_000 + b"]" * 200_000, "error", "nested too deeply")
    raw_case("glb_json_overrun", "overrun.glb", b"glTF" + struct.pack("<II", 2, 1 << 30) +
             struct.pack("<II", 1 << 30, 0x4E4F534A) + b"{}  ", "error", "truncated")
    tree = {"asset": {"version": "2.0"}, "nodes": [{"children": [1]}, {"children": [0], "mesh": 0}],
            "scenes": [{"nodes": [0]}], "scene": 0, "meshes": [{"primitives": []}]}
    raw_case("node_cycle", "cycle.gltf", json.dumps(tree).encode(), "error", "cycle")
    many = {"asset": {"version": "2.0"}, "images": [{"uri": f"i{i}.png"} for i in range(200)]}
    raw_case("many_resources", "many.gltf", json.dumps(many).encode(), "error", "MeshLimits.max_resources")
    raw_case("gltf_uri_outside", "out.gltf", json.dumps({
        "asset": {"version": "2.0"}, "buffers": [{"uri": "/dev/zero", "byteLength": 1 << 30}],
        "images": [{"uri": "../server/id_rsa"}]}).encode(), "error", "")
    raw_case("gzip_bomb", "bomb.obj.gz", gzip.compress(b"v 0 0 0\n" * 2_000_000), "error", "unknown format")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("mesh.obj", b"v 0 0 0\n" * 2_000_000)
    raw_case("zip_as_glb", "zip.glb", zbuf.getvalue(), "error", "cannot parse")
    raw_case("empty", "empty.obj", b"", "error", "empty")
    d = folder / "mesh_is_fifo"
    d.mkdir(exist_ok=True)
    os.mkfifo(d / "fifo.obj")
    cases.append(Case("mesh_is_fifo", d / "fifo.obj", "error", "not a regular file", local=True))
    return cases
