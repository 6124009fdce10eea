"""The HTTP scorer service: FastAPI app behind ``rewardkit serve --scorer DIR``.

Protocol (JSON and multipart only; nothing is pickled in either direction):

``GET /health``
    ``{"status": "ok", "rewardkit_version", "device", "scorers": {name: {kind, stage, modes, camera,
    views, render_size}}, "limits": {...}, "batching": {"batches", "items", "max_batch_seen", ...}}``
    (no paths on disk). Never waits behind scoring requests and needs no token.

``POST /score`` (``application/json``)
    One item ``{"prompt": str, "views": {mode: [base64 PNG, ...]}, "scorers": [names]?, "per_view": bool?}``
    answered by ``{"scores": {name: float}, "per_view": {name: [float]}?, "std": {name: float}?}`` (``std``
    for the scorers that report one: an ensemble's spread, kind ``stage-ensemble``); or several
    ``{"items": [item, ...]}`` answered by ``{"results": [answer, ...]}``. ``views`` may also be a plain
    list of PNGs when every selected scorer needs the same single mode. Without ``scorers`` every scorer
    whose render modes are all present scores the item. Views of modes no selected scorer uses are ignored
    (not decoded).

``POST /score_mesh`` (``multipart/form-data``: ``file`` = the mesh, ``prompt``, optional ``scorers`` as a
    comma-separated list and ``per_view``). The server renders the mesh with the scorers' own camera
    protocol (one render for all scorers) and answers like ``/score``, plus ``"warnings"``.

Concurrent requests are micro-batched: items wait in an asyncio queue for up to ``batch_window_ms`` (or
until ``max_batch`` items are waiting) and are scored with one forward per scorer (items with equal view
shapes are stacked, at most ``max_item_pixels`` view pixels per forward). JSON parsing, base64 and image
decoding run in a decoder thread pool and the forward in a worker thread, so the event loop (and
``/health``) stays responsive while a large request is being decoded.

Every limit lives in :class:`ServiceLimits` and is checked before its cost is paid: the body size from
``Content-Length`` and while it streams, image sizes from the PNG/JPEG header before any pixel is decoded,
a request's pixel total before the first image is decoded; requests beyond ``max_concurrent_requests`` wait
without their body being read. With a shared token (:func:`create_app` ``token=``) every endpoint but
``/health`` needs ``Authorization: Bearer <token>``.

Errors: 400 undecodable JSON, base64, image or mesh; 401 missing or wrong token; 408 headers or body not
received in time; 413 body, image, pixel total or mesh over its size limit; 415 wrong content type or mesh
format; 422 validation (wrong types, unknown keys, missing fields, too many items, modes or views, missing
render modes, unknown scorer names, views of different sizes within a mode). Every error body is
``{"detail": "<what and the limit>"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import File, Form, Request, UploadFile  # module level: the route annotations resolve here

from rewardkit import __version__
from rewardkit.scoring.api import as_scorer_set
from rewardkit.scoring.base import ScorerSet
from rewardkit.scoring.core import RendererCache, render_groups, render_mesh, score_samples_std
from rewardkit.scoring.errors import RequestError
from rewardkit.scoring.wire import decode_image, decode_into, encode_png, image_header

TOKEN_ENV = "REWARDKIT_SERVICE_TOKEN"
ITEM_KEYS = ("prompt", "views", "scorers", "per_view")
MiB = 1024 * 1024


@dataclass
class ServiceLimits:
    """Request limits of the scorer service, each enforced before its cost is paid and answered with a 4xx
    whose message names the limit. ``rewardkit serve`` sets them with ``--max-*`` / ``--*-timeout``
    options; from Python pass ``create_app(..., limits=ServiceLimits(...))``. See docs/security.md.

    The defaults bound the server's memory: at most ``max_concurrent_requests`` requests are read, decoded
    and scored at once, each holding at most ``max_request_bytes`` of body and ``max_request_pixels`` decoded
    view pixels (3 bytes each), and one forward takes at most ``max_item_pixels`` view pixels per scorer.
    """

    max_request_bytes: int = 64 * MiB  # body of one request (Content-Length or streamed/chunked)
    max_items: int = 64  # items in one /score request
    max_modes: int = 4  # render-mode keys in one item's "views"
    max_views: int = 32  # images per mode in one item
    max_image_side: int = 1024  # px, read from the image header before decoding
    max_item_pixels: int = 2 ** 22  # sum of width*height over one item's decoded views (also the forward chunk)
    max_request_pixels: int = 2 ** 25  # sum of width*height over all decoded views of one request
    max_mesh_bytes: int = 64 * MiB
    max_prompt_chars: int = 2000
    max_concurrent_requests: int = 3  # requests read/decoded/scored at once; more wait, their body unread
    max_connections: int = 256  # open connections; beyond: 503
    max_header_bytes: int = 16 * 1024  # request line + headers
    header_timeout_s: float = 10.0  # a new connection must send complete headers within this
    body_timeout_s: float = 30.0  # the whole body must arrive within this once it is being read
    keep_alive_s: float = 5.0  # idle keep-alive connections are closed after this
    decode_threads: int = 2  # threads decoding JSON/base64/images off the event loop

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"ServiceLimits.{f.name} must be a positive number, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_token(token_file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The shared service token: the first line of ``token_file``, else ``$REWARDKIT_SERVICE_TOKEN``, else None."""
    env = os.environ if env is None else env
    if token_file is not None:
        try:
            text = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{token_file}: cannot read the token file ({type(exc).__name__}: {exc})") from None
        token = text.splitlines()[0].strip() if text else ""
        if len(token) < 16:
            raise ValueError(f"{token_file}: the token must be at least 16 characters (got {len(token)})")
        return token
    token = (env.get(TOKEN_ENV) or "").strip()
    if token and len(token) < 16:
        raise ValueError(f"${TOKEN_ENV}: the token must be at least 16 characters (got {len(token)})")
    return token or None


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when the service would listen beyond loopback without a token (None when fine)."""
    if token:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host in ("localhost",):
            return None
    return (f"warning: serving on {host} without a token: anyone who can reach this port can use the scorers "
            f"and the GPU. Set --token-file FILE (or ${TOKEN_ENV}) and put the service behind your own "
            "TLS proxy (docs/security.md)")


def _libc_malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim  # glibc; absent on musl, macOS and Windows
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_freed_memory() -> bool:
    """Hand the pages that the C allocator keeps after a large request back to the OS (glibc's
    ``malloc_trim``, which releases free pages in every arena). Without it the freed bodies, base64 strings
    and decoded views of earlier requests stay resident in the allocator's arenas, scattered so that
    later requests cannot always reuse them, and the process's RSS creeps above what it holds. The service
    calls it off the event loop after every ``/score`` request. -> whether anything was released."""
    return bool(_MALLOC_TRIM(0)) if _MALLOC_TRIM is not None else False


# ---------------------------------------------------------------------------------------------------- #
# micro-batching
# ---------------------------------------------------------------------------------------------------- #
@dataclass
class _Job:
    prompt: str
    views: dict[str, torch.Tensor]  # mode -> uint8 [V, 3, H, W]
    scorers: list[str]
    per_view: bool


class MicroBatcher:
    """Collects jobs from concurrent requests and scores them together (one forward per scorer and shape)."""

    def __init__(self, scorers: ScorerSet, *, max_batch: int = 32, window_s: float = 0.005,
                 max_forward_pixels: int | None = None) -> None:
        self.scorers = scorers
        self.max_batch = max(1, int(max_batch))
        self.max_forward_pixels = int(max_forward_pixels) if max_forward_pixels else None
        self.window_s = max(0.0, float(window_s))
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardkit-forward")
        self._task: asyncio.Task | None = None
        self.stats = {"batches": 0, "items": 0, "forwards": 0, "max_batch_seen": 0, "last_batch_sizes": []}
        self._lock = threading.Lock()

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, job: _Job) -> dict[str, Any]:
        assert self.queue is not None, "batcher not started"
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((job, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None
        while True:
            first = await self.queue.get()
            batch = [first]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                try:
                    batch.append(self.queue.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self.queue.get(), remaining))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            live = [(j, f) for j, f in batch if not f.done()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._forward, [j for j, _ in live])
            except Exception as exc:  # pragma: no cover - _forward catches per group
                results = [exc] * len(live)
            for (_, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _forward(self, jobs: list[_Job]) -> list[Any]:
        """Runs in the worker thread: one forward per (scorer, view shapes) group."""
        out: list[Any] = [{"scores": {}, "per_view": {}, "std": {}} for _ in jobs]
        n_forwards = 0
        for name, scorer in self.scorers.items():
            groups: dict[tuple, list[int]] = {}
            for i, job in enumerate(jobs):
                if name in job.scorers:
                    key = tuple(tuple(job.views[m].shape) for m in scorer.modes)
                    groups.setdefault(key, []).append(i)
            chunks = []
            for idx in groups.values():  # at most max_forward_pixels view pixels per forward (at least one job)
                chunk, px = [], 0
                for i in idx:
                    n = sum(int(np.prod(jobs[i].views[m].shape)) // 3 for m in scorer.modes)
                    if chunk and self.max_forward_pixels and px + n > self.max_forward_pixels:
                        chunks.append(chunk)
                        chunk, px = [], 0
                    chunk.append(i)
                    px += n
                chunks.append(chunk)
            for idx in chunks:
                try:
                    want_pv = any(jobs[i].per_view for i in idx)
                    scores, pv, std = score_samples_std(scorer, [jobs[i].views for i in idx],
                                                        [jobs[i].prompt for i in idx], want_pv)
                    n_forwards += 1
                    for j, i in enumerate(idx):
                        out[i]["scores"][name] = scores[j]
                        if std is not None:
                            out[i]["std"][name] = std[j]
                        if pv is not None and jobs[i].per_view:
                            out[i]["per_view"][name] = pv[j]
                except Exception as exc:
                    for i in idx:
                        out[i] = RequestError(500, f"scorer {name!r} failed: {type(exc).__name__}: {exc}")
        for r in out:
            if isinstance(r, dict) and not r["per_view"]:
                r.pop("per_view")
            if isinstance(r, dict) and not r["std"]:
                r.pop("std")
        with self._lock:
            st = self.stats
            st["batches"] += 1
            st["items"] += len(jobs)
            st["forwards"] += n_forwards
            st["max_batch_seen"] = max(st["max_batch_seen"], len(jobs))
            st["last_batch_sizes"] = (st["last_batch_sizes"] + [len(jobs)])[-50:]
        return out


# ---------------------------------------------------------------------------------------------------- #
# mesh rendering (one GL context, in its own thread)
# ---------------------------------------------------------------------------------------------------- #
class _MeshRenderer:
    """Uploaded meshes are loaded in an IsolatedLoader (a worker process with a time limit and a memory cap,
    MeshLimits), so no upload can block this render thread or grow the service's memory while parsing."""

    def __init__(self, scorers: ScorerSet, mesh_limits: Any = None) -> None:
        from rewardkit.io import IsolatedLoader, MeshLimits

        self.groups = render_groups(scorers)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardkit-render")
        self._renderers = RendererCache()  # used from the executor's one thread only
        self.mesh_limits = mesh_limits or MeshLimits.from_env()
        self.loader = IsolatedLoader(self.mesh_limits)

    def render(self, path: str) -> tuple[list[tuple[list[str], dict[str, torch.Tensor]]], list[str]]:
        """-> [(scorer names of a render group, {mode: uint8 [V, 3, H, W]})], load warnings."""
        loaded = self.loader.load(path)
        views = render_mesh(loaded, self.groups, self._renderers)
        return [(list(g.names), views[gi]) for gi, g in enumerate(self.groups)], list(loaded.warnings)

    def close(self) -> None:
        try:
            self.executor.submit(self._renderers.close).result(timeout=10)
        except Exception:  # pragma: no cover
            pass
        self.executor.shutdown(wait=False)
        self.loader.close()


def _upload_name(filename: str | None, suffix: str) -> str:
    """The uploaded file's own name, reduced to safe characters (messages name it, never a server path)."""
    stem = Path((filename or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:80] or "mesh"
    return stem + suffix


def _scrub(message: str, folder: str) -> str:
    """Drop the server's temporary folder from a message about an upload."""
    for form in (folder + os.sep, folder):
        message = message.replace(form, "")
    return message


# ---------------------------------------------------------------------------------------------------- #
# the app
# ---------------------------------------------------------------------------------------------------- #
class _Guard:
    """ASGI middleware in front of every route: the shared token, the concurrency slots, the body size and the
    body read time. Its own errors answer JSON with ``connection: close`` (the rest of the body is not read)."""

    def __init__(self, app: Any, limits: ServiceLimits, token: str | None = None) -> None:
        self.app, self.limits = app, limits
        self.token = token.encode() if token else None
        self._slots: asyncio.Semaphore | None = None

    def _authorized(self, scope: dict) -> bool:
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                scheme, _, given = v.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        lim = self.limits
        path = scope.get("path", "")
        if self.token is not None and path != "/health" and not self._authorized(scope):
            return await _send_json(send, 401, {"detail": "missing or wrong token: send 'Authorization: Bearer "
                                                          "<token>' (the service was started with a token)"},
                                    extra=[(b"www-authenticate", b"Bearer")])
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return await _send_json(send, 400, {"detail": f"bad Content-Length {v[:40]!r}"})
                if n > lim.max_request_bytes:
                    return await _send_json(send, 413, {"detail": f"request body of {n} bytes exceeds the limit of "
                                                                  f"{lim.max_request_bytes} bytes (max_request_bytes)"})
        if path == "/health":  # never waits behind scoring requests
            return await self.app(scope, receive, send)
        if self._slots is None:
            self._slots = asyncio.Semaphore(lim.max_concurrent_requests)
        async with self._slots:
            await self._guarded(scope, receive, send)

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        lim = self.limits
        loop = asyncio.get_running_loop()
        error: RequestError | None = None
        started = False
        received = 0
        body_done = False
        deadline: float | None = None

        async def limited_receive() -> dict:
            nonlocal error, received, body_done, deadline
            if error is not None:
                raise error
            if body_done:
                return await receive()
            if deadline is None:
                deadline = loop.time() + lim.body_timeout_s
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                error = RequestError(408, f"request body not received within {lim.body_timeout_s:g} s "
                                          f"(body_timeout_s); {received} bytes arrived")
                raise error from None
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > lim.max_request_bytes:
                    error = RequestError(413, f"request body exceeds the limit of {lim.max_request_bytes} bytes "
                                              "(max_request_bytes)")
                    raise error
                body_done = not msg.get("more_body", False)
            return msg

        async def guarded_send(msg: dict) -> None:
            nonlocal started
            if error is not None:  # the app's own answer to our error (FastAPI turns it into a 400): dropped
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if error is None:
                raise
        if error is not None and not started:
            await _send_json(send, error.status, {"detail": error.detail})


async def _send_json(send: Any, status: int, body: dict, extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": data})


def _http_protocol(limits: ServiceLimits) -> type:
    """uvicorn's h11 protocol plus a header read timeout (uvicorn has none: a client that never finishes its
    headers holds its connection forever) and JSON answers to malformed or oversized headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    timeout = float(limits.header_timeout_s)

    def raw_json(status: int, reason: str, detail: str) -> bytes:
        body = json.dumps({"detail": detail}).encode()
        return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n").encode() + body

    class HeaderTimeoutH11Protocol(H11Protocol):
        _rk_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._rk_arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self._rk_timer is None:  # part of a request's headers: the clock runs from the first byte
                    self._rk_arm()
            else:
                self._rk_cancel()

        def connection_lost(self, exc: Exception | None) -> None:
            self._rk_cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self.transport.write(raw_json(400, "Bad Request", "invalid HTTP request: malformed, or request line "
                                          f"and headers over {limits.max_header_bytes} bytes (max_header_bytes)"))
            self.transport.close()

        def _rk_arm(self) -> None:
            self._rk_cancel()
            self._rk_timer = self.loop.call_later(timeout, self._rk_timeout)

        def _rk_cancel(self) -> None:
            if self._rk_timer is not None:
                self._rk_timer.cancel()
                self._rk_timer = None

        def _rk_timeout(self) -> None:
            self._rk_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            self.transport.write(raw_json(408, "Request Timeout", f"request headers not received within "
                                                                  f"{timeout:g} s (header_timeout_s)"))
            self.transport.close()

    return HeaderTimeoutH11Protocol


def server_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                  **kw: Any) -> Any:
    """The ``uvicorn.Config`` that enforces the app's :class:`ServiceLimits` at the connection level (header
    timeout and size, keep-alive, connection count). Use it instead of a plain ``uvicorn.Config``."""
    import uvicorn

    limits: ServiceLimits = app.state.limits
    kw.setdefault("lifespan", "on")
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_http_protocol(limits),
                          limit_concurrency=limits.max_connections, timeout_keep_alive=limits.keep_alive_s,
                          h11_max_incomplete_event_size=limits.max_header_bytes, **kw)


@dataclass
class _ItemSpec:
    """A validated item whose images are read up to their headers (nothing decoded yet)."""

    prompt: str
    scorers: list[str]
    per_view: bool
    images: dict[str, list[bytes]]  # mode -> raw PNG/JPEG bytes
    sizes: dict[str, tuple[int, int]]  # mode -> (height, width)
    pixels: int = 0
    where: str = field(default="request")


def create_app(scorers: Any, *, limits: ServiceLimits | None = None, max_batch: int = 32,
               batch_window_ms: float = 5.0, device: str | torch.device | None = None,
               mesh_limits: Any = None, token: str | None = None) -> Any:
    """The FastAPI app serving ``scorers`` (a ScorerSet, a scorer, or scorer directories). ``mesh_limits``
    (a :class:`rewardkit.io.MeshLimits`, default from the ``REWARDKIT_MESH_*`` environment) bounds what
    reading one uploaded mesh may cost. ``token``: a shared secret every endpoint but ``/health`` then
    requires as ``Authorization: Bearer <token>``. Run it with :func:`serve`, or with
    ``uvicorn.Server(server_config(app))`` for the header timeout."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    scorer_set = as_scorer_set(scorers, device=device)
    limits = limits or ServiceLimits()
    batcher = MicroBatcher(scorer_set, max_batch=max_batch, window_s=batch_window_ms / 1000.0,
                           max_forward_pixels=limits.max_item_pixels)
    mesh_renderer = _MeshRenderer(scorer_set, mesh_limits)
    decoder = ThreadPoolExecutor(max_workers=int(limits.decode_threads), thread_name_prefix="rewardkit-decode")
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: Any):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            mesh_renderer.close()
            decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="rewardkit scorer", version=__version__, lifespan=lifespan)
    app.state.batcher = batcher
    app.state.scorers = scorer_set
    app.state.limits = limits
    app.state.token_required = bool(token)
    app.add_middleware(_Guard, limits=limits, token=token)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):  # a bug here, not the client's
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})

    service_modes = sorted({m for s in scorer_set.scorers.values() for m in s.modes})

    def _names(requested: Any, where: str) -> list[str] | None:
        if requested is None:
            return None
        if isinstance(requested, str):
            requested = [x.strip() for x in requested.split(",") if x.strip()]
        if not isinstance(requested, list) or not requested or not all(isinstance(x, str) for x in requested):
            raise RequestError(422, f"{where}: 'scorers' must be a non-empty list of scorer names (or a "
                                    f"comma-separated string); this service has {scorer_set.names()}")
        unknown = [n for n in requested if n not in scorer_set.scorers]
        if unknown:
            raise RequestError(422, f"{where}: unknown scorers {unknown}; this service has {scorer_set.names()}")
        return requested

    def _select(requested: Any, present_modes: set[str], where: str) -> list[str]:
        names = _names(requested, where)
        if names is None:
            chosen = [n for n, s in scorer_set.items() if set(s.modes) <= present_modes]
            if not chosen:
                needs = "; ".join(f"{n} needs {s.modes}" for n, s in scorer_set.items())
                raise RequestError(422, f"{where}: no scorer can use views of modes {sorted(present_modes)} ({needs})")
            return chosen
        for n in names:
            missing = [m for m in scorer_set[n].modes if m not in present_modes]
            if missing:
                raise RequestError(422, f"{where}: scorer {n!r} needs render modes {scorer_set[n].modes}; missing {missing}")
        return names

    def _check_item(item: Any, where: str) -> _ItemSpec:
        """Validate one item and read its images' headers (runs in a decoder thread)."""
        if not isinstance(item, Mapping):
            raise RequestError(422, f"{where}: expected a JSON object {{prompt, views, scorers?, per_view?}}, got "
                                    f"{type(item).__name__}")
        unknown = sorted(str(k) for k in item if k not in ITEM_KEYS)
        if unknown:
            raise RequestError(422, f"{where}: unknown keys {unknown[:5]}; an item has {list(ITEM_KEYS)}")
        if "prompt" not in item:
            raise RequestError(422, f"{where}: 'prompt' is missing")
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(422, f"{where}: 'prompt' must be a non-empty string")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(422, f"{where}: prompt has {len(prompt)} characters, over the limit of "
                                    f"{limits.max_prompt_chars} (max_prompt_chars)")
        per_view = item.get("per_view", False)
        if not isinstance(per_view, bool):
            raise RequestError(422, f"{where}: 'per_view' must be true or false, got {type(per_view).__name__}")
        if "views" not in item:
            raise RequestError(422, f"{where}: 'views' is missing")
        views = item["views"]
        requested = _names(item.get("scorers"), where)
        if isinstance(views, list):
            modes = sorted({m for n in (requested or scorer_set.names()) for m in scorer_set[n].modes})
            if len(modes) != 1:
                raise RequestError(422, f"{where}: 'views' is a list, but the scorers need modes {modes}; "
                                        "send {mode: [PNG, ...]}")
            views = {modes[0]: views}
        if not isinstance(views, Mapping) or not views:
            raise RequestError(422, f"{where}: 'views' must be {{mode: [base64 PNG, ...]}} with at least one mode "
                                    f"(this service's modes: {service_modes})")
        if len(views) > limits.max_modes:
            raise RequestError(422, f"{where}: {len(views)} render modes in 'views', over the limit of "
                                    f"{limits.max_modes} (max_modes)")
        for mode, images in views.items():
            if not isinstance(images, list) or not images:
                raise RequestError(422, f"{where}: views[{mode!r}] must be a non-empty list of base64 PNGs")
            if len(images) > limits.max_views:
                raise RequestError(422, f"{where}: {len(images)} views for mode {mode!r}, over the limit of "
                                        f"{limits.max_views} (max_views)")
        chosen = _select(requested, set(views), where)
        needed = [m for m in views if any(m in scorer_set[n].modes for n in chosen)]
        spec = _ItemSpec(prompt=prompt, scorers=chosen, per_view=per_view, images={}, sizes={}, where=where)
        for mode in needed:
            images = views[mode]
            raws, shapes = [], set()
            for i in range(len(images)):
                raw, w, h = image_header(images[i], limits, f"{where}.views[{mode!r}][{i}]")
                images[i] = None  # the base64 text is not needed any more
                raws.append(raw)
                shapes.add((h, w))
                spec.pixels += w * h
                if spec.pixels > limits.max_item_pixels:
                    raise RequestError(413, f"{where}: its views have more than {limits.max_item_pixels} pixels "
                                            "(max_item_pixels; sum of width*height)")
            if len(shapes) > 1:
                raise RequestError(422, f"{where}: views of mode {mode!r} have different sizes {sorted(shapes)}")
            spec.images[str(mode)], spec.sizes[str(mode)] = raws, shapes.pop()
        return spec

    def _decode(spec: _ItemSpec) -> _Job:
        tensors: dict[str, torch.Tensor] = {}
        for mode, raws in spec.images.items():
            h, w = spec.sizes[mode]
            out = torch.empty((len(raws), 3, h, w), dtype=torch.uint8)
            for i in range(len(raws)):
                decode_into(raws[i], out[i], f"{spec.where}.views[{mode!r}][{i}]")
                raws[i] = b""
            tensors[mode] = out
        return _Job(prompt=spec.prompt, views=tensors, scorers=spec.scorers, per_view=spec.per_view)

    def _parse_body(box: list) -> tuple[list[_Job], bool]:
        """JSON body -> jobs (runs in a decoder thread): validate everything and sum the pixels from the image
        headers, then decode. -> (jobs, whether the request was the ``items`` form)."""
        raw = box.pop()
        try:
            text = raw.decode("utf-8")
            del raw  # the bytes go before the parsed strings arrive: one body-sized copy less at the peak
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise RequestError(400, f"body is not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from exc
        del text
        many = isinstance(body, Mapping) and "items" in body
        if many:
            extra = sorted(str(k) for k in body if k != "items")
            if extra:
                raise RequestError(422, f"unknown keys {extra[:5]} next to 'items'; a batch is {{\"items\": [item, ...]}}")
            items = body["items"]
            if not isinstance(items, list) or not items:
                raise RequestError(422, "'items' must be a non-empty list of items")
            if len(items) > limits.max_items:
                raise RequestError(422, f"{len(items)} items in one request, over the limit of {limits.max_items} "
                                        "(max_items)")
            specs = [_check_item(it, f"items[{i}]") for i, it in enumerate(items)]
        else:
            specs = [_check_item(body, "request")]
        del body
        total = sum(s.pixels for s in specs)
        if total > limits.max_request_pixels:
            raise RequestError(413, f"the request's views have {total} pixels, over the limit of "
                                    f"{limits.max_request_pixels} (max_request_pixels; sum of width*height)")
        return [_decode(s) for s in specs], many

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "rewardkit_version": __version__,
            "uptime_s": round(time.time() - started, 3),
            "device": str(next(iter(scorer_set.scorers.values())).device),
            "scorers": {k: {kk: vv for kk, vv in d.items() if kk != "source"} for k, d in scorer_set.describe().items()},
            "token_required": bool(token),
            "limits": limits.to_dict(),
            "batching": {"max_batch": batcher.max_batch, "window_ms": batcher.window_s * 1000, **batcher.stats},
        }

    @app.post("/score")
    async def score(request: Request) -> Any:
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype:
            raise RequestError(415, f"POST /score takes application/json, got {ctype!r}; upload meshes to /score_mesh")
        try:
            declared = int(request.headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        # one buffer of the declared size (no reallocation copies while it grows); the guard has already
        # refused a Content-Length over the limit, and the HTTP parser holds the client to it
        buf = bytearray(declared)
        pos = 0
        async for chunk in request.stream():
            end = pos + len(chunk)
            if end <= declared:
                buf[pos:end] = chunk
            else:
                buf[pos:] = chunk
            pos = end
        del buf[pos:]
        box = [buf]
        del buf
        loop = asyncio.get_running_loop()
        jobs, many = await loop.run_in_executor(decoder, _parse_body, box)
        try:
            results = await asyncio.gather(*(batcher.submit(j) for j in jobs))
        finally:
            del jobs  # the decoded views: the request's largest buffers
            loop.run_in_executor(decoder, release_freed_memory)
        return {"results": list(results)} if many else results[0]

    @app.post("/score_mesh")
    async def score_mesh(file: UploadFile = File(...), prompt: str = Form(...), scorers: str | None = Form(None),
                         per_view: bool = Form(False)) -> Any:
        from rewardkit.io import SUPPORTED_FORMATS, MeshError

        if not prompt.strip():
            raise RequestError(422, "'prompt' must be a non-empty string")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(422, f"prompt has {len(prompt)} characters, over the limit of {limits.max_prompt_chars}")
        suffix = Path(file.filename or "").suffix.lower()
        if suffix not in SUPPORTED_FORMATS or suffix == ".gltf":
            raise RequestError(415, f"mesh file {file.filename!r}: format {suffix or '(none)'} not supported here; "
                                    f"upload one of {', '.join(s for s in SUPPORTED_FORMATS if s != '.gltf')} "
                                    "(self-contained files; .glb for textured meshes)")
        data = await file.read(limits.max_mesh_bytes + 1)
        if len(data) > limits.max_mesh_bytes:
            raise RequestError(413, f"mesh file is larger than the limit of {limits.max_mesh_bytes} bytes")
        if not data:
            raise RequestError(400, "mesh file is empty")
        with tempfile.TemporaryDirectory(prefix="rewardkit-upload-") as tmp:
            # the upload's folder holds only the upload: it can name no other file the server would read
            name = _upload_name(file.filename, suffix)
            path = os.path.join(tmp, name)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, Path(path).write_bytes, data)  # off the event loop
            try:
                groups, warnings = await loop.run_in_executor(mesh_renderer.executor, mesh_renderer.render, path)
            except MeshError as exc:
                raise RequestError(400, f"cannot read mesh {name!r}: {_scrub(exc.reason, tmp)}") from exc
            except Exception as exc:
                raise RequestError(500, f"cannot render mesh {name!r}: {type(exc).__name__}: {_scrub(str(exc), tmp)}") from exc
            warnings = [_scrub(w, tmp) for w in warnings]
        all_modes = {m for _, views in groups for m in views}
        chosen = _select(scorers, all_modes, "request")
        # one job per render group (scorers trained on different protocols/sizes get their own views)
        jobs = [_Job(prompt=prompt, views=views, scorers=[n for n in names if n in chosen], per_view=per_view)
                for names, views in groups]
        try:
            parts = await asyncio.gather(*(batcher.submit(j) for j in jobs if j.scorers))
        finally:
            del jobs, groups
            loop.run_in_executor(decoder, release_freed_memory)
        res: dict[str, Any] = {"scores": {}}
        for part in parts:
            res["scores"].update(part["scores"])
            if part.get("per_view"):
                res.setdefault("per_view", {}).update(part["per_view"])
            if part.get("std"):
                res.setdefault("std", {}).update(part["std"])
        res["scores"] = {n: res["scores"][n] for n in chosen if n in res["scores"]}
        if "std" in res:
            res["std"] = {n: res["std"][n] for n in chosen if n in res["std"]}
        res["warnings"] = warnings
        return res

    return app


def serve(scorers: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **kw: Any) -> None:
    """Run the service with uvicorn (blocking); ``kw`` goes to :func:`create_app` (``limits``, ``token``, ...)."""
    import sys

    import uvicorn

    warning = exposure_warning(host, kw.get("token"))
    if warning:
        print(warning, file=sys.stderr)
    app = create_app(scorers, **kw)
    uvicorn.Server(server_config(app, host=host, port=port, log_level=log_level)).run()


__all__ = ["MicroBatcher", "RequestError", "ServiceLimits", "TOKEN_ENV", "create_app", "decode_image", "encode_png",
           "exposure_warning", "read_token", "release_freed_memory", "serve", "server_config"]
