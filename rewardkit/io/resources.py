"""Reading a mesh's files safely: only regular files inside the mesh's folder, every size checked before
the bytes are read, texture sizes from their headers, and counts from headers before geometry is built.

Used by :func:`rewardkit.io.mesh.load_mesh`. Messages never name a file outside the mesh's folder and
never depend on whether such a file exists (a remote client must not learn which server files exist).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import trimesh

from rewardkit.errors import RewardkitError
from rewardkit.io.limits import MeshLimits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tga", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ktx2", ".dds")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


class LimitExceeded(RewardkitError):
    """A file breaks one of the :class:`MeshLimits`; ``load_mesh`` turns it into a MeshError."""


def _fmt_mp(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def read_regular_file(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file, at most ``max_bytes``; devices, FIFOs and sockets are refused from
    their ``fstat`` before any read, and the open never blocks (O_NONBLOCK)."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LimitExceeded(f"{what} is not a regular file (a device, FIFO, socket or folder); not read")
        if st.st_size > max_bytes:
            raise LimitExceeded(f"{what} is {st.st_size} bytes, more than the limit of {max_bytes} "
                                "(MeshLimits.max_file_bytes)")
        chunks, total = [], 0
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            total += len(block)
            if total > max_bytes:  # the file grew while we read it
                raise LimitExceeded(f"{what} is more than the limit of {max_bytes} bytes (MeshLimits.max_file_bytes)")
            chunks.append(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an image's header, without decoding pixels. Raises LimitExceeded for images
    so big that PIL refuses to even open them, ValueError for data that is no image PIL reads."""
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            return im.size
    except PIL.Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        raise LimitExceeded(f"{int(m.group(1)) if m else 'too many'} pixels") from None
    except Exception as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def looks_like_image(name: str, data: bytes) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) or data[:4].startswith(_IMAGE_MAGIC) or data[:3] == b"\xff\xd8\xff"


@dataclass
class ResourceReport:
    """What reading one mesh's files found: warnings (kept on the LoadedMesh) and the first fatal problem."""

    warnings: list[str] = field(default_factory=list)
    fatal: str | None = None
    n_resources: int = 0
    total_bytes: int = 0

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def fail(self, msg: str) -> None:
        if self.fatal is None:
            self.fatal = msg


class SafeResolver(trimesh.resolvers.Resolver):
    """A trimesh resolver that hands out only regular files inside ``root`` (the mesh's folder or
    ``MeshLimits.resource_root``), size- and count-limited, with texture headers checked."""

    def __init__(self, mesh_path: Path, limits: MeshLimits, report: ResourceReport) -> None:
        self.mesh_path = Path(mesh_path)
        self.file_name = self.mesh_path.name
        self.file_path = str(self.mesh_path)
        self.parent = str(self.mesh_path.parent)
        root = limits.resource_root or self.mesh_path.parent
        self.root = Path(os.path.realpath(root))
        self.limits, self.report = limits, report
        self.texture_pixels: dict[str, tuple[int, int]] = {}

    # -- locating ---------------------------------------------------------------------------------
    def locate(self, name: str) -> tuple[Path | None, str]:
        """-> (real path, "ok") or (None, "outside" | "missing" | "special"). Never opens anything."""
        raw = (name or "").strip().strip('"').replace("\\", "/")
        if not raw or "\x00" in raw:
            return None, "missing"
        outside = os.path.isabs(raw) or bool(re.match(r"^[A-Za-z]:/", raw)) or raw.startswith("~")
        candidates = [] if outside else [raw]
        base = raw.rstrip("/").rsplit("/", 1)[-1]
        if base not in ("", ".", "..") and base != raw:
            candidates.append(base)  # exporters often write absolute paths to a texture that sits next to the mesh
        for i, c in enumerate(candidates):
            real = Path(os.path.realpath(self.mesh_path.parent / c))
            if real != self.root and self.root not in real.parents:
                if i == 0:
                    outside = True
                continue
            try:
                st = os.stat(real)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                return None, "special"
            return real, "ok"
        return None, "outside" if outside else "missing"

    # -- reading ----------------------------------------------------------------------------------
    def read(self, real: Path, shown: str) -> bytes:
        self.report.n_resources += 1
        if self.report.n_resources > self.limits.max_resources:
            raise LimitExceeded(f"names more than {self.limits.max_resources} files (MeshLimits.max_resources)")
        data = read_regular_file(real, self.limits.max_file_bytes, f"{shown!r}")
        self.report.total_bytes += len(data)
        if self.report.total_bytes > self.limits.max_total_bytes:
            raise LimitExceeded(f"its files are more than {self.limits.max_total_bytes} bytes together "
                                "(MeshLimits.max_total_bytes)")
        return data

    def get(self, name: str) -> bytes:
        real, status = self.locate(name)
        if real is None:
            raise FileNotFoundError(name if status != "outside" else "outside the mesh folder")
        shown = real.name
        try:
            data = self.read(real, shown)
            if looks_like_image(real.name, data):
                check_texture(data, shown, self.limits)
        except LimitExceeded as exc:
            self.report.fail(str(exc))
            raise FileNotFoundError(shown) from None
        except ValueError:  # undecodable image: trimesh drops it; the MTL scan below warns about it
            raise FileNotFoundError(shown) from None
        return data

    def __getitem__(self, name: str) -> bytes:
        return self.get(name)

    def keys(self):  # trimesh's API
        return iter(())

    def namespaced(self, namespace: str) -> "SafeResolver":
        return self

    def write(self, name, data):  # pragma: no cover - loading never writes
        raise PermissionError("rewardkit's mesh resolver is read-only")


def check_texture(data: bytes, shown: str, limits: MeshLimits) -> tuple[int, int]:
    """Raise LimitExceeded if the image's header says it has more pixels than the limit."""
    try:
        w, h = image_size(data)
    except LimitExceeded as exc:
        raise LimitExceeded(f"texture {shown} has {exc}, more than the limit of "
                            f"{limits.max_texture_pixels} ({_fmt_mp(limits.max_texture_pixels)}, "
                            "MeshLimits.max_texture_pixels)") from None
    if w * h > limits.max_texture_pixels:
        raise LimitExceeded(f"texture {shown} is {w}x{h} ({_fmt_mp(w * h)}), more than the limit of "
                            f"{limits.max_texture_pixels} pixels ({_fmt_mp(limits.max_texture_pixels)}, "
                            "MeshLimits.max_texture_pixels)")
    return w, h


def _outside_msg(kind: str, consequence: str) -> str:
    return f"{kind} path outside the mesh folder; not read ({consequence})"


# ---------------------------------------------------------------------------------------------------- #
# OBJ
# ---------------------------------------------------------------------------------------------------- #
_DECLARED = re.compile(rb"^#\s*(?:(faces|vertices)\s*[:=]?\s*(\d+)|(\d+)\s+(faces|vertices))\b", re.I | re.M)


def scan_obj(data: bytes, resolver: SafeResolver, report: ResourceReport, limits: MeshLimits) -> None:
    """Counts, truncation and the MTL/texture files of an OBJ, before trimesh builds anything."""
    name = resolver.file_name
    n_v = len(re.findall(rb"^[ \t]*v[ \t]", data, flags=re.M))
    n_f = len(re.findall(rb"^[ \t]*f[ \t]", data, flags=re.M))
    if n_f > limits.max_faces:
        raise LimitExceeded(f"{n_f} faces, more than the limit of {limits.max_faces} (MeshLimits.max_faces)")
    if n_v > limits.max_vertices:
        raise LimitExceeded(f"{n_v} vertices, more than the limit of {limits.max_vertices} (MeshLimits.max_vertices)")
    declared: dict[str, int] = {}
    for m in _DECLARED.finditer(data[:65536]):
        kind = (m.group(1) or m.group(4)).lower().decode()
        declared.setdefault(kind, int(m.group(2) or m.group(3)))
    have = {"faces": n_f, "vertices": n_v}
    for kind, n in declared.items():
        if have[kind] < n:
            report.warn(f"{name} holds {have[kind]} of the {n} {kind} its header comment declares "
                        "(the file looks truncated)")
    stripped = data.rstrip(b" \t\r")
    if stripped and not stripped.endswith(b"\n"):
        last = stripped.rsplit(b"\n", 1)[-1].split()
        if last and ((last[0] == b"f" and len(last) < 4) or (last[0] == b"v" and len(last) < 4)):
            report.warn(f"{name} ends in the middle of a {'face' if last[0] == b'f' else 'vertex'} line "
                        "(the file looks truncated)")
    text = data.decode("utf-8", errors="replace")
    for match in re.finditer(r"^[ \t]*mtllib[ \t]+(.+?)\s*$", text, flags=re.MULTILINE):
        mtl_name = match.group(1)
        real, status = resolver.locate(mtl_name)
        if status == "outside":
            report.warn(_outside_msg("mtllib", "using a fallback colour"))
            continue
        if status == "special":
            report.warn(f"MTL file {mtl_name!r} is not a regular file; not read (using a fallback colour)")
            continue
        if real is None:
            report.warn(f"MTL file {mtl_name!r} not found next to {name}; using a fallback colour")
            continue
        try:
            mtl_text = read_regular_file(real, limits.max_file_bytes, f"MTL file {mtl_name!r}").decode("utf-8", "replace")
        except LimitExceeded as exc:
            report.fail(str(exc))
            return
        for tex in re.finditer(r"^\s*(map_\w+|bump|disp|decal|norm)\s+(.+?)\s*$", mtl_text, flags=re.MULTILINE):
            # the file name is the last token(s) after any options such as "-s 1 1 1"
            tokens = tex.group(2).split()
            what = tex.group(1)
            consequence = "using the material's base colour" if what.lower() == "map_kd" else "ignored"
            statuses = [resolver.locate(" ".join(tokens[i:])) for i in range(len(tokens))]
            found = next((r for r, s in statuses if r is not None), None)
            if found is None:
                if any(s == "outside" for _, s in statuses):
                    report.warn(_outside_msg(f"texture ({what}) in {mtl_name}", consequence))
                elif any(s == "special" for _, s in statuses):
                    report.warn(f"texture {tokens[-1]!r} ({what}) named in {mtl_name} is not a regular file; "
                                f"not read ({consequence})")
                else:
                    report.warn(f"texture {tokens[-1]!r} ({what}) named in {mtl_name} not found; {consequence}")
            elif what.lower() == "map_kd":
                try:
                    check_texture(read_regular_file(found, limits.max_file_bytes, repr(found.name)), found.name, limits)
                except LimitExceeded as exc:
                    report.fail(str(exc))
                except ValueError as exc:
                    report.warn(f"texture {found.name!r} ({what}) named in {mtl_name} cannot be decoded ({exc}); "
                                f"{consequence}")


# ---------------------------------------------------------------------------------------------------- #
# glTF / GLB
# ---------------------------------------------------------------------------------------------------- #
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


# ---------------------------------------------------------------------------------------------------- #
# OFF, PLY, STL headers
# ---------------------------------------------------------------------------------------------------- #
def _check_counts(nv: int, nf: int, limits: MeshLimits, fmt: str) -> None:
    if nf > limits.max_faces:
        raise LimitExceeded(f"the {fmt} header declares {nf} faces, more than the limit of {limits.max_faces} "
                            "(MeshLimits.max_faces)")
    if nv > limits.max_vertices:
        raise LimitExceeded(f"the {fmt} header declares {nv} vertices, more than the limit of {limits.max_vertices} "
                            "(MeshLimits.max_vertices)")


def scan_off(data: bytes, name: str, report: ResourceReport, limits: MeshLimits) -> None:
    lines = [ln.split(b"#", 1)[0].strip() for ln in data.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].split()[0].upper().endswith(b"OFF"):
        raise ValueError("no OFF header")
    head = lines[0].split()
    rest = lines[1:]
    counts = head[1:] if len(head) > 1 else (rest[0].split() if rest else [])
    if len(head) <= 1:
        rest = rest[1:]
    try:
        nv, nf = int(counts[0]), int(counts[1])
    except (IndexError, ValueError):
        raise ValueError("the OFF header has no vertex and face counts") from None
    if nv < 0 or nf < 0:
        raise ValueError(f"negative counts in the OFF header ({nv} vertices, {nf} faces)")
    _check_counts(nv, nf, limits, "OFF")
    got_v, got_f = min(len(rest), nv), max(0, min(len(rest) - nv, nf))
    if got_v < nv or got_f < nf:
        report.warn(f"{name} holds {got_v} of {nv} vertices and {got_f} of {nf} faces its header declares "
                    "(the file looks truncated)")


_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def scan_ply(data: bytes, name: str, report: ResourceReport, limits: MeshLimits) -> None:
    end = data.find(b"end_header", 0, 1 << 20)
    if not data.startswith(b"ply") or end < 0:
        raise ValueError("no PLY header ending in end_header within the first MB")
    header = data[:end].decode("ascii", "replace").splitlines()
    body = data[end + len(b"end_header"):].lstrip(b"\r").lstrip(b"\n")
    fmt = next((ln.split()[1] for ln in header if ln.startswith("format ") and len(ln.split()) > 1), "ascii")
    elements: list[list] = []  # [name, count, least bytes of one row]
    for ln in header:
        parts = ln.split()
        if not parts:
            continue
        if parts[0] == "element" and len(parts) >= 3:
            try:
                elements.append([parts[1], int(parts[2]), 0])
            except ValueError:
                raise ValueError(f"bad element line in the PLY header: {ln[:80]!r}") from None
        elif parts[0] == "property" and elements and len(parts) >= 3:
            # a list property holds at least its count; a scalar its size
            elements[-1][2] += _PLY_SIZES.get(parts[2] if parts[1] == "list" else parts[1], 1)
    counts = {el: n for el, n, _ in elements}
    nv, nf = counts.get("vertex", 0), counts.get("face", 0)
    if nv < 0 or nf < 0:
        raise ValueError("negative element counts in the PLY header")
    _check_counts(nv, nf, limits, "PLY")
    if fmt.startswith("binary"):
        need = sum(n * row for _, n, row in elements)
        if need > len(body):
            raise ValueError(f"the PLY header declares {nv} vertices and {nf} faces (at least {need} bytes) but "
                             f"the file holds {len(body)} bytes of data (truncated)")
    else:
        rows = len([ln for ln in body.splitlines() if ln.strip()])
        if rows < nv + nf:
            report.warn(f"{name} holds {rows} data lines; its header declares {nv} vertices and {nf} faces "
                        "(the file looks truncated)")


def scan_stl(data: bytes, limits: MeshLimits) -> None:
    if len(data) >= 84:
        (n,) = struct.unpack_from("<I", data, 80)
        if len(data) == 84 + 50 * n and n > limits.max_faces:
            raise LimitExceeded(f"{n} faces, more than the limit of {limits.max_faces} (MeshLimits.max_faces)")
    if data[:5].lower() == b"solid":
        n = data.count(b"facet normal")
        if n > limits.max_faces:
            raise LimitExceeded(f"{n} faces, more than the limit of {limits.max_faces} (MeshLimits.max_faces)")
