"""The glTF / GLB scan of :mod:`rewardkit.io.resources`: what a glTF file declares (buffers, images,
accessor counts) checked against :class:`~rewardkit.io.MeshLimits` before trimesh parses it; external and
``data:`` URIs go through the :class:`~rewardkit.io.resources.SafeResolver` (no path outside the folder)."""

from __future__ import annotations

import base64
import json
import struct

from rewardkit.io.limits import MeshLimits
from rewardkit.io.resources import LimitExceeded, ResourceReport, SafeResolver, _outside_msg, check_texture


def _glb_chunks(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < 20 or data[:4] != b"glTF":
        raise ValueError("not a GLB file (no 'glTF' magic)")
    _, _length = struct.unpack_from("<II", data, 4)
    json_len, json_type = struct.unpack_from("<II", data, 12)
    if json_type != 0x4E4F534A:
        raise ValueError("the first GLB chunk is not JSON")
    if json_len > len(data) - 20:
        raise ValueError(f"the JSON chunk claims {json_len} bytes; the file has {len(data)} (truncated)")
    json_bytes = data[20:20 + json_len]
    binary = b""
    off = 20 + json_len
    off += (-off) % 4
    if off + 8 <= len(data):
        bin_len, bin_type = struct.unpack_from("<II", data, off)
        if bin_type == 0x004E4942:
            binary = data[off + 8: off + 8 + bin_len]
    return json_bytes, binary


def _count(v: object) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 0


def scan_gltf(data: bytes, binary_container: bool, resolver: SafeResolver, report: ResourceReport,
              limits: MeshLimits) -> None:
    """Faces and vertices after instancing, resource counts and texture headers from the glTF JSON."""
    name = resolver.file_name
    try:
        json_bytes, binary = _glb_chunks(data) if binary_container else (data, b"")
    except (ValueError, struct.error) as exc:
        raise ValueError(str(exc)) from None
    if len(json_bytes) > limits.max_json_bytes:
        raise LimitExceeded(f"glTF JSON of {len(json_bytes)} bytes, more than the limit of {limits.max_json_bytes} "
                            "(MeshLimits.max_json_bytes)")
    try:
        tree = json.loads(json_bytes)
    except RecursionError:
        raise ValueError("the glTF JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the glTF JSON does not parse ({exc})") from None
    if not isinstance(tree, dict):
        raise ValueError("the glTF JSON is not an object")

    def listed(key: str) -> list:
        v = tree.get(key, [])
        return v if isinstance(v, list) else []

    accessors, meshes, nodes = listed("accessors"), listed("meshes"), listed("nodes")
    images, buffers = listed("images"), listed("buffers")
    if len(images) + len(buffers) > limits.max_resources:
        raise LimitExceeded(f"{len(images)} images and {len(buffers)} buffers, more than the limit of "
                            f"{limits.max_resources} files (MeshLimits.max_resources)")

    def acc_count(i: object) -> int:
        if isinstance(i, int) and 0 <= i < len(accessors) and isinstance(accessors[i], dict):
            return _count(accessors[i].get("count"))
        return 0

    mesh_faces, mesh_verts = [], []
    for m in meshes:
        f = v = 0
        for p in (m.get("primitives", []) if isinstance(m, dict) else []):
            if not isinstance(p, dict):
                continue
            attrs = p.get("attributes") if isinstance(p.get("attributes"), dict) else {}
            nv = acc_count(attrs.get("POSITION"))
            n = acc_count(p["indices"]) if "indices" in p else nv
            mode = p.get("mode", 4)
            f += n // 3 if mode == 4 else max(n - 2, 0) if mode in (5, 6) else 0
            v += nv
        mesh_faces.append(f)
        mesh_verts.append(v)

    # instances of each node = number of paths from the scene's roots (a DAG: a node listed under two
    # parents is instanced twice); cycles are an error
    children = [[c for c in (n.get("children", []) if isinstance(n, dict) else []) if isinstance(c, int)
                 and 0 <= c < len(nodes)] for n in nodes]
    scenes = listed("scenes")
    scene_i = tree.get("scene", 0)
    if scenes and isinstance(scene_i, int) and 0 <= scene_i < len(scenes) and isinstance(scenes[scene_i], dict):
        roots = [r for r in scenes[scene_i].get("nodes", []) if isinstance(r, int) and 0 <= r < len(nodes)]
    else:
        child_set = {c for cs in children for c in cs}
        roots = [i for i in range(len(nodes)) if i not in child_set]
    paths = [0] * len(nodes)
    state = [0] * len(nodes)  # 0 new, 1 on stack, 2 done
    order: list[int] = []
    for r in roots:
        if state[r]:
            continue
        stack = [(r, iter(children[r]))]
        state[r] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                order.append(node)
                stack.pop()
            elif state[nxt] == 1:
                raise ValueError("the glTF node graph has a cycle")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(children[nxt])))
    for r in roots:
        paths[r] += 1
    for node in reversed(order):  # parents before children
        for c in children[node]:
            paths[c] += paths[node]
    faces = verts = instances = 0
    if nodes:
        for i, n in enumerate(nodes):
            mi = n.get("mesh") if isinstance(n, dict) else None
            if isinstance(mi, int) and 0 <= mi < len(meshes) and paths[i]:
                faces += paths[i] * mesh_faces[mi]
                verts += paths[i] * mesh_verts[mi]
                instances += paths[i]
    else:
        faces, verts, instances = sum(mesh_faces), sum(mesh_verts), len(meshes)
    if faces > limits.max_faces:
        raise LimitExceeded(f"{faces} faces after instancing ({instances} mesh instances), more than the limit of "
                            f"{limits.max_faces} (MeshLimits.max_faces)")
    if verts > limits.max_vertices:
        raise LimitExceeded(f"{verts} vertices after instancing ({instances} mesh instances), more than the limit "
                            f"of {limits.max_vertices} (MeshLimits.max_vertices)")

    views = listed("bufferViews")
    for b in buffers:
        uri = b.get("uri") if isinstance(b, dict) else None
        if isinstance(uri, str) and not uri.startswith("data:"):
            real, status = resolver.locate(uri)
            if status == "outside":
                report.warn(_outside_msg("buffer", "the geometry that needs it cannot load"))
            elif real is None:
                report.warn(f"buffer {uri!r} named in {name} {'is not a regular file' if status == 'special' else 'not found'}")
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            continue
        shown = f"image {i} of {name}"
        blob: bytes | None = None
        if isinstance(img.get("bufferView"), int) and binary_container:
            bv = views[img["bufferView"]] if 0 <= img["bufferView"] < len(views) else None
            if isinstance(bv, dict) and bv.get("buffer", 0) == 0:
                start = _count(bv.get("byteOffset", 0))
                blob = binary[start:start + _count(bv.get("byteLength"))]
        elif isinstance(img.get("uri"), str):
            uri = img["uri"]
            if uri.startswith("data:"):
                idx = uri.find("base64,")
                try:
                    blob = base64.b64decode(uri[idx + 7:]) if idx >= 0 else None
                except ValueError:
                    blob = b""
            else:
                real, status = resolver.locate(uri)
                if real is None:
                    report.warn(_outside_msg(f"texture ({shown})", "using the material's base colour")
                                if status == "outside" else
                                f"texture {uri!r} ({shown}) {'is not a regular file' if status == 'special' else 'not found'}"
                                "; using the material's base colour")
                else:
                    shown = real.name
                    blob = resolver.read(real, shown)
                    resolver.report.n_resources -= 1  # trimesh reads it again through the resolver
                    resolver.report.total_bytes -= len(blob)
        if blob is None:
            continue
        try:
            resolver.texture_pixels[shown] = check_texture(blob, shown, limits)
        except ValueError as exc:
            report.warn(f"texture {shown} cannot be decoded ({exc}); using the material's base colour")


__all__ = ["scan_gltf"]
