"""Loading meshes in a worker process with a per-mesh time limit and memory cap.

:class:`IsolatedLoader` keeps one worker process (``python -m rewardkit.io._worker``: numpy, trimesh and
PIL only, started once and reused) whose address space is capped with ``RLIMIT_AS`` at
``MeshLimits.max_memory_bytes``. Each :meth:`IsolatedLoader.load` sends a path, waits at most
``MeshLimits.load_timeout_s`` for the loaded mesh, and on a timeout or a dead worker kills it, raises a
:class:`MeshError` naming the file and the limit, and starts a fresh worker for the next mesh. So a mesh
that would hang or exhaust memory costs one failed item; the batch, the render thread and the service go
on. The worker sends the :class:`LoadedMesh` back pickled over its stdout pipe: the bytes come from our
own child process (built from numpy arrays and PIL images), never from the network or the mesh file.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rewardkit.io.limits import DEFAULT_LIMITS, MeshLimits
from rewardkit.io.mesh import LoadedMesh, MeshError, load_mesh

_HEADER = struct.Struct("<Q")
STARTUP_TIMEOUT_S = 60.0


def _write_msg(fh, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_HEADER.pack(len(data)))
    fh.write(data)
    fh.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        block = os.read(fd, min(n - got, 1 << 22))
        if not block:
            raise EOFError
        chunks.append(block)
        got += len(block)
    return b"".join(chunks)


class IsolatedLoader:
    """Loads mesh files in a capped worker process (see the module docstring). Thread-safe (one load at a
    time); use as a context manager or call :meth:`close`. With ``limits.isolate=False`` it loads in the
    calling process (no caps beyond the checks of :func:`load_mesh`)."""

    def __init__(self, limits: MeshLimits | None = None) -> None:
        self.limits = limits or DEFAULT_LIMITS
        self._proc: subprocess.Popen | None = None
        self._proc_memory = 0
        self._lock = threading.Lock()
        self.restarts = 0

    # -- worker lifecycle ---------------------------------------------------------------------------
    def _start(self, memory_bytes: int) -> subprocess.Popen:
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"  # thread pools reserve address space; the loader needs none
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "rewardkit.io._worker", str(int(memory_bytes))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
        )
        try:
            ready = _read_exact(proc.stdout.fileno(), 5, time.monotonic() + STARTUP_TIMEOUT_S)
        except (TimeoutError, EOFError):
            proc.kill()
            proc.wait()
            raise RuntimeError("the mesh loader worker did not start (python -m rewardkit.io._worker)") from None
        if ready != b"ready":
            proc.kill()
            raise RuntimeError("the mesh loader worker sent an unexpected greeting")
        return proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass
            proc.wait()
            for fh in (proc.stdin, proc.stdout):
                try:
                    fh.close()
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __enter__(self) -> "IsolatedLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._kill()
        except Exception:
            pass

    # -- loading ------------------------------------------------------------------------------------
    def load(self, path: str | os.PathLike, *, up: str = "+y", limits: MeshLimits | None = None) -> LoadedMesh:
        """Load one mesh like :func:`load_mesh`, stopped after ``load_timeout_s`` or when the worker exceeds
        ``max_memory_bytes``. Raises :class:`MeshError` for the mesh's problems and for those stops."""
        limits = limits or self.limits
        if not limits.isolate:
            return load_mesh(path, up=up, limits=limits)
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or self._proc_memory != limits.max_memory_bytes:
                self._kill()
                self._proc = self._start(limits.max_memory_bytes)
                self._proc_memory = limits.max_memory_bytes
                self.restarts += 1
            proc = self._proc
            try:
                _write_msg(proc.stdin, (os.fspath(path), up, limits))
                deadline = time.monotonic() + float(limits.load_timeout_s)
                (n,) = _HEADER.unpack(_read_exact(proc.stdout.fileno(), _HEADER.size, deadline))
                status, payload = pickle.loads(_read_exact(proc.stdout.fileno(), n, deadline))
            except TimeoutError:
                self._kill()
                raise MeshError(path, f"loading took longer than {limits.load_timeout_s:g} s "
                                      "(MeshLimits.load_timeout_s); stopped") from None
            except (EOFError, BrokenPipeError, OSError):
                code = proc.poll()
                self._kill()
                raise MeshError(path, f"the loader process died while reading it (exit code {code}; a memory "
                                      f"cap of {limits.max_memory_bytes} bytes, MeshLimits.max_memory_bytes)") from None
        if status == "ok":
            return payload
        if status == "mesh_error":
            raise MeshError(path, payload)
        raise MeshError(path, payload)


def _worker(memory_bytes: int) -> None:  # pragma: no cover - runs in the child
    import resource

    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    out = os.fdopen(os.dup(1), "wb")
    sys.stdout = sys.stderr  # nothing printed by a library may corrupt the pipe
    inp = sys.stdin.buffer
    out.write(b"ready")
    out.flush()
    while True:
        head = inp.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return
        (n,) = _HEADER.unpack(head)
        path, up, limits = pickle.loads(inp.read(n))
        try:
            result: tuple[str, Any] = ("ok", load_mesh(path, up=up, limits=limits))
        except MeshError as exc:
            result = ("mesh_error", exc.reason)
        except MemoryError:
            result = ("error", (f"out of memory while reading it (memory cap of {memory_bytes} bytes, "
                                "MeshLimits.max_memory_bytes)"))
        except BaseException as exc:
            result = ("error", f"{type(exc).__name__}: {exc}")
        try:
            _write_msg(out, result)
        except MemoryError:
            _write_msg(out, ("error", (f"out of memory sending the loaded mesh back (memory cap of {memory_bytes} "
                                       "bytes, MeshLimits.max_memory_bytes)")))


_default: IsolatedLoader | None = None
_default_lock = threading.Lock()


def default_loader() -> IsolatedLoader:
    """A process-wide loader (its worker is started on the first load and reused)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = IsolatedLoader()
        return _default


def load_mesh_isolated(path: str | os.PathLike, *, up: str = "+y", limits: MeshLimits | None = None) -> LoadedMesh:
    """:func:`load_mesh` in the process-wide :class:`IsolatedLoader` (time limit and memory cap)."""
    return default_loader().load(path, up=up, limits=limits)
