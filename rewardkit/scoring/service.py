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

Modules (one concern each): :mod:`~rewardkit.scoring.service_limits` (the limits, the token, the guard
middleware, the uvicorn configuration), :mod:`~rewardkit.scoring.service_batching` (the micro-batcher),
:mod:`~rewardkit.scoring.service_requests` (request validation), this module (the app: routes, mesh
rendering, wiring) and :mod:`~rewardkit.scoring.service_ray` (the same app as Ray Serve replicas).

Concurrent requests are micro-batched: items wait in an asyncio queue for up to ``batch_window_ms`` (or
until ``max_batch`` items are waiting) and are scored with one forward per scorer (items with equal view
shapes are stacked, at most ``max_item_pixels`` view pixels per forward). JSON parsing, base64 and image
decoding run in a decoder thread pool and the forward in a worker thread, so the event loop (and
``/health``) stays responsive while a large request is being decoded. Uploaded meshes render in one render
thread (one GL context) per app, i.e. per process or Ray Serve replica.

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
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import File, Form, Request, UploadFile  # module level: the route annotations resolve here

from rewardkit import __version__
from rewardkit.scoring.api import as_scorer_set
from rewardkit.scoring.base import ScorerSet
from rewardkit.scoring.core import RendererCache, render_groups, render_mesh
from rewardkit.scoring.errors import RequestError
from rewardkit.scoring.service_batching import Job, MicroBatcher
from rewardkit.scoring.service_limits import (
    TOKEN_ENV,
    RequestGuard,
    ServiceLimits,
    exposure_warning,
    read_token,
    server_config,
)
from rewardkit.scoring.service_requests import RequestParser, scrub, upload_name
from rewardkit.scoring.wire import decode_image, encode_png


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


class _MeshRenderer:
    """Renders uploads in its own thread (one GL context, created in that thread). Uploaded meshes are loaded
    in an IsolatedLoader (a worker process with a time limit and a memory cap, MeshLimits), so no upload can
    block this render thread or grow the service's memory while parsing."""

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


class _Routes:
    """The service's three endpoints over its parts: the request parser, the batcher, the mesh renderer and
    the decoder threads."""

    def __init__(self, scorer_set: ScorerSet, limits: ServiceLimits, batcher: MicroBatcher,
                 mesh_renderer: _MeshRenderer, decoder: ThreadPoolExecutor, token: str | None) -> None:
        self.scorer_set, self.limits, self.batcher = scorer_set, limits, batcher
        self.mesh_renderer, self.decoder, self.token = mesh_renderer, decoder, token
        self.parser = RequestParser(scorer_set, limits)
        self.started = time.time()

    async def health(self) -> dict:
        ss, batcher = self.scorer_set, self.batcher
        return {
            "status": "ok",
            "rewardkit_version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "device": str(next(iter(ss.scorers.values())).device),
            "scorers": {k: {kk: vv for kk, vv in d.items() if kk != "source"} for k, d in ss.describe().items()},
            "token_required": bool(self.token),
            "limits": self.limits.to_dict(),
            "batching": {"max_batch": batcher.max_batch, "window_ms": batcher.window_s * 1000, **batcher.stats},
        }

    async def score(self, request: Request) -> Any:
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
        jobs, many = await loop.run_in_executor(self.decoder, self.parser.parse_body, box)
        try:
            results = await asyncio.gather(*(self.batcher.submit(j) for j in jobs))
        finally:
            del jobs  # the decoded views: the request's largest buffers
            loop.run_in_executor(self.decoder, release_freed_memory)
        return {"results": list(results)} if many else results[0]

    async def score_mesh(self, file: UploadFile = File(...), prompt: str = Form(...),
                         scorers: str | None = Form(None), per_view: bool = Form(False)) -> Any:
        from rewardkit.io import MeshError

        limits = self.limits
        self.parser.check_prompt(prompt)
        suffix = self.parser.upload_suffix(file.filename)
        data = await file.read(limits.max_mesh_bytes + 1)
        if len(data) > limits.max_mesh_bytes:
            raise RequestError(413, f"mesh file is larger than the limit of {limits.max_mesh_bytes} bytes")
        if not data:
            raise RequestError(400, "mesh file is empty")
        renderer = self.mesh_renderer
        with tempfile.TemporaryDirectory(prefix="rewardkit-upload-") as tmp:
            # the upload's folder holds only the upload: it can name no other file the server would read
            name = upload_name(file.filename, suffix)
            path = os.path.join(tmp, name)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, Path(path).write_bytes, data)  # off the event loop
            try:
                groups, warnings = await loop.run_in_executor(renderer.executor, renderer.render, path)
            except MeshError as exc:
                raise RequestError(400, f"cannot read mesh {name!r}: {scrub(exc.reason, tmp)}") from exc
            except Exception as exc:
                raise RequestError(500, f"cannot render mesh {name!r}: {type(exc).__name__}: {scrub(str(exc), tmp)}") from exc
            warnings = [scrub(w, tmp) for w in warnings]
        all_modes = {m for _, views in groups for m in views}
        chosen = self.parser.select(scorers, all_modes, "request")
        # one job per render group (scorers trained on different protocols/sizes get their own views)
        jobs = [Job(prompt=prompt, views=views, scorers=[n for n in names if n in chosen], per_view=per_view)
                for names, views in groups]
        try:
            parts = await asyncio.gather(*(self.batcher.submit(j) for j in jobs if j.scorers))
        finally:
            del jobs, groups
            loop.run_in_executor(self.decoder, release_freed_memory)
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


async def _request_error(request: Request, exc: RequestError) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=exc.status, content={"detail": exc.detail})


async def _internal_error(request: Request, exc: Exception) -> Any:  # a bug here, not the client's
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})


def create_app(scorers: Any, *, limits: ServiceLimits | None = None, max_batch: int = 32,
               batch_window_ms: float = 5.0, device: str | torch.device | None = None,
               mesh_limits: Any = None, token: str | None = None) -> Any:
    """The FastAPI app serving ``scorers`` (a ScorerSet, a scorer, or scorer directories). ``mesh_limits``
    (a :class:`rewardkit.io.MeshLimits`, default from the ``REWARDKIT_MESH_*`` environment) bounds what
    reading one uploaded mesh may cost. ``token``: a shared secret every endpoint but ``/health`` then
    requires as ``Authorization: Bearer <token>``. Run it with :func:`serve`, or with
    ``uvicorn.Server(server_config(app))`` for the header timeout."""
    from fastapi import FastAPI

    scorer_set = as_scorer_set(scorers, device=device)
    limits = limits or ServiceLimits()
    batcher = MicroBatcher(scorer_set, max_batch=max_batch, window_s=batch_window_ms / 1000.0,
                           max_forward_pixels=limits.max_item_pixels)
    mesh_renderer = _MeshRenderer(scorer_set, mesh_limits)
    decoder = ThreadPoolExecutor(max_workers=int(limits.decode_threads), thread_name_prefix="rewardkit-decode")
    routes = _Routes(scorer_set, limits, batcher, mesh_renderer, decoder, token)

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
    app.state.batcher, app.state.scorers, app.state.limits = batcher, scorer_set, limits
    app.state.token_required = bool(token)
    app.add_middleware(RequestGuard, limits=limits, token=token)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/score", routes.score, methods=["POST"])
    app.add_api_route("/score_mesh", routes.score_mesh, methods=["POST"])
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
