"""Reading a mesh's files safely: only regular files inside the mesh's folder, every size checked before
the bytes are read, texture sizes from their headers, and counts from headers before geometry is built.

Used by :func:`rewardkit.io.mesh.load_mesh`. Messages never name a file outside the mesh's folder and
never depend on whether such a file exists (a remote client must not learn which server files exist).
"""

from __future__ import annotations

import io
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
