"""The HTTP scorer service: FastAPI app behind ``rewardkit serve --scorer DIR``.

Protocol (JSON and multipart only; nothing is pickled in either direction):

``GET /health``
    ``{"status": "ok", "rewardkit_version", "device", "scorers": {name: {kind, stage, modes, camera,
    views, render_size}}, "limits": {...}, "batching": {"batches", "items", "max_batch_seen", ...}}``

``POST /score`` (``application/json``)
    One item ``{"prompt": str, "views": {mode: [base64 PNG, ...]}, "scorers": [names]?, "per_view": bool?}``
    answered by ``{"scores": {name: float}, "per_view": {name: [float]}?}``; or several
    ``{"items": [item, ...]}`` answered by ``{"results": [answer, ...]}``. ``views`` may also be a plain
    list of PNGs when every selected scorer needs the same single mode. Without ``scorers`` every scorer
    whose render modes are all present scores the item.

``POST /score_mesh`` (``multipart/form-data``: ``file`` = the mesh, ``prompt``, optional ``scorers`` as a
    comma-separated list and ``per_view``). The server renders the mesh with the scorers' own camera
    protocol (one render for all scorers) and answers like ``/score``, plus ``"warnings"``.

Concurrent requests are micro-batched: items wait in an asyncio queue for up to ``batch_window_ms`` (or
until ``max_batch`` items are waiting) and are scored with one forward per scorer (items with equal view
shapes are stacked). The forward runs in a worker thread, so the event loop keeps accepting requests.

Errors: 400 undecodable base64/image or mesh; 413 body, image or mesh over its size limit; 415 mesh
format not supported; 422 validation (too many items or views, missing render modes, unknown scorer
names, views of different sizes within a mode). Every error body is ``{"detail": "<what and the limit>"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import File, Form, Request, UploadFile  # module level: the route annotations resolve here

from rewardkit import __version__
from rewardkit.scoring.api import as_scorer_set, render_groups, views_to_tensor
from rewardkit.scoring.export import ScorerSet


@dataclass
class ServiceLimits:
    """Request limits (all enforced with a 4xx and a message naming the limit)."""

    max_request_bytes: int = 64 * 1024 * 1024
    max_items: int = 64
    max_views: int = 32
    max_image_side: int = 1024
    max_mesh_bytes: int = 64 * 1024 * 1024
    max_prompt_chars: int = 2000

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class RequestError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# ---------------------------------------------------------------------------------------------------- #
# decoding
# ---------------------------------------------------------------------------------------------------- #
def decode_image(data: str, limits: ServiceLimits, where: str) -> np.ndarray:
    """A base64 PNG (or JPEG) -> HxWx3 uint8. Size is checked from the header before decoding pixels."""
    import PIL.Image

    if not isinstance(data, str):
        raise RequestError(422, f"{where}: expected a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{where}: not valid base64 ({exc})")
    try:
        img = PIL.Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"])
    except Exception as exc:
        raise RequestError(400, f"{where}: not a PNG or JPEG image ({type(exc).__name__})")
    w, h = img.size
    if max(w, h) > limits.max_image_side:
        raise RequestError(413, f"{where}: image is {w}x{h}, larger than the limit of {limits.max_image_side} px a side")
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise RequestError(400, f"{where}: cannot decode image ({type(exc).__name__}: {exc})")


def encode_png(image: np.ndarray) -> str:
    """HxWx3 uint8 -> base64 PNG string (the client side of :func:`decode_image`)."""
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


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

    def __init__(self, scorers: ScorerSet, *, max_batch: int = 32, window_s: float = 0.005) -> None:
        self.scorers = scorers
        self.max_batch = max(1, int(max_batch))
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
        out: list[Any] = [{"scores": {}, "per_view": {}} for _ in jobs]
        n_forwards = 0
        for name, scorer in self.scorers.items():
            groups: dict[tuple, list[int]] = {}
            for i, job in enumerate(jobs):
                if name in job.scorers:
                    key = tuple(tuple(job.views[m].shape) for m in scorer.modes)
                    groups.setdefault(key, []).append(i)
            for idx in groups.values():
                try:
                    views = {m: torch.stack([jobs[i].views[m] for i in idx]) for m in scorer.modes}
                    want_pv = any(jobs[i].per_view for i in idx)
                    res = scorer.score_views(views, [jobs[i].prompt for i in idx], per_view=want_pv)
                    n_forwards += 1
                    scores = res.scores.detach().float().cpu().tolist()
                    pv = res.per_view.detach().float().cpu().tolist() if want_pv and res.per_view is not None else None
                    for j, i in enumerate(idx):
                        out[i]["scores"][name] = float(scores[j])
                        if pv is not None and jobs[i].per_view:
                            out[i]["per_view"][name] = [float(x) for x in pv[j]]
                except Exception as exc:
                    for i in idx:
                        out[i] = RequestError(500, f"scorer {name!r} failed: {type(exc).__name__}: {exc}")
        for r in out:
            if isinstance(r, dict) and not r["per_view"]:
                r.pop("per_view")
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
        self._renderers: dict[int, Any] = {}
        self.mesh_limits = mesh_limits or MeshLimits.from_env()
        self.loader = IsolatedLoader(self.mesh_limits)

    def render(self, path: str) -> tuple[list[tuple[list[str], dict[str, torch.Tensor]]], list[str]]:
        """-> [(scorer names of a render group, {mode: uint8 [V, 3, H, W]})], load warnings."""
        from rewardkit.render import Renderer

        loaded = self.loader.load(path)
        out_groups = []
        for gi, g in enumerate(self.groups):
            r = self._renderers.get(gi)
            if r is None:
                r = self._renderers[gi] = Renderer(size=g.protocol.size, config=g.render_config)
            out = r.render(loaded, g.protocol, modes=g.modes)
            out_groups.append((list(g.names), {m: views_to_tensor(out[m]) for m in g.modes}))
        return out_groups, list(loaded.warnings)

    def close(self) -> None:
        def _close() -> None:
            for r in self._renderers.values():
                r.close()
            self._renderers.clear()

        try:
            self.executor.submit(_close).result(timeout=10)
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
class _BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413 (checks Content-Length and counts)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = 0
                if n > self.limit:
                    return await _send_json(send, 413, {"detail": f"request body of {n} bytes exceeds the limit of "
                                                                  f"{self.limit} bytes"})
        received = 0
        too_big = False

        async def limited_receive() -> dict:
            nonlocal received, too_big
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    too_big = True
                    raise RequestError(413, f"request body exceeds the limit of {self.limit} bytes")
            return msg

        try:
            await self.app(scope, limited_receive, send)
        except RequestError as exc:
            if too_big:
                await _send_json(send, exc.status, {"detail": exc.detail})
            else:  # pragma: no cover
                raise


async def _send_json(send: Any, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(scorers: Any, *, limits: ServiceLimits | None = None, max_batch: int = 32,
               batch_window_ms: float = 5.0, device: str | torch.device | None = None,
               mesh_limits: Any = None) -> Any:
    """The FastAPI app serving ``scorers`` (a ScorerSet, a scorer, or scorer directories). ``mesh_limits``
    (a :class:`rewardkit.io.MeshLimits`, default from the ``REWARDKIT_MESH_*`` environment) bounds what
    reading one uploaded mesh may cost."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    scorer_set = as_scorer_set(scorers, device=device)
    limits = limits or ServiceLimits()
    batcher = MicroBatcher(scorer_set, max_batch=max_batch, window_s=batch_window_ms / 1000.0)
    mesh_renderer = _MeshRenderer(scorer_set, mesh_limits)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: Any):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            mesh_renderer.close()

    app = FastAPI(title="rewardkit scorer", version=__version__, lifespan=lifespan)
    app.state.batcher = batcher
    app.state.scorers = scorer_set
    app.state.limits = limits
    app.add_middleware(_BodyLimit, limit=limits.max_request_bytes)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):  # noqa: ANN202
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    def _select(requested: Any, present_modes: set[str], where: str) -> list[str]:
        if requested is None:
            chosen = [n for n, s in scorer_set.items() if set(s.modes) <= present_modes]
            if not chosen:
                needs = "; ".join(f"{n} needs {s.modes}" for n, s in scorer_set.items())
                raise RequestError(422, f"{where}: no scorer can use views of modes {sorted(present_modes)} ({needs})")
            return chosen
        if isinstance(requested, str):
            requested = [x.strip() for x in requested.split(",") if x.strip()]
        if not isinstance(requested, list) or not all(isinstance(x, str) for x in requested) or not requested:
            raise RequestError(422, f"{where}: 'scorers' must be a non-empty list of names")
        unknown = [n for n in requested if n not in scorer_set.scorers]
        if unknown:
            raise RequestError(422, f"{where}: unknown scorers {unknown}; this service has {scorer_set.names()}")
        for n in requested:
            missing = [m for m in scorer_set[n].modes if m not in present_modes]
            if missing:
                raise RequestError(422, f"{where}: scorer {n!r} needs render modes {scorer_set[n].modes}; missing {missing}")
        return requested

    def _parse_item(item: Any, where: str) -> _Job:
        if not isinstance(item, Mapping):
            raise RequestError(422, f"{where}: expected a JSON object")
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(422, f"{where}: 'prompt' must be a non-empty string")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(422, f"{where}: prompt has {len(prompt)} characters, over the limit of "
                                    f"{limits.max_prompt_chars}")
        views = item.get("views")
        if isinstance(views, list):
            modes = {m for s in scorer_set.scorers.values() for m in s.modes}
            wanted = item.get("scorers")
            if wanted is not None:
                names = [wanted] if isinstance(wanted, str) else list(wanted)
                modes = {m for n in names if n in scorer_set.scorers for m in scorer_set[n].modes}
            if len(modes) != 1:
                raise RequestError(422, f"{where}: 'views' is a list, but the scorers need modes {sorted(modes)}; "
                                        "send {mode: [PNG, ...]}")
            views = {next(iter(modes)): views}
        if not isinstance(views, Mapping) or not views:
            raise RequestError(422, f"{where}: 'views' must be {{mode: [base64 PNG, ...]}} with at least one mode")
        tensors: dict[str, torch.Tensor] = {}
        for mode, images in views.items():
            if not isinstance(images, list) or not images:
                raise RequestError(422, f"{where}: views[{mode!r}] must be a non-empty list of base64 PNGs")
            if len(images) > limits.max_views:
                raise RequestError(422, f"{where}: {len(images)} views for mode {mode!r}, over the limit of "
                                        f"{limits.max_views}")
            arrays = [decode_image(b, limits, f"{where}.views[{mode!r}][{i}]") for i, b in enumerate(images)]
            if len({a.shape for a in arrays}) > 1:
                raise RequestError(422, f"{where}: views of mode {mode!r} have different sizes "
                                        f"{sorted({a.shape[:2] for a in arrays})}")
            tensors[str(mode)] = views_to_tensor(arrays)
        chosen = _select(item.get("scorers"), set(tensors), where)
        return _Job(prompt=prompt, views=tensors, scorers=chosen, per_view=bool(item.get("per_view", False)))

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "rewardkit_version": __version__,
            "uptime_s": round(time.time() - started, 3),
            "device": str(next(iter(scorer_set.scorers.values())).device),
            "scorers": scorer_set.describe(),
            "limits": limits.to_dict(),
            "batching": {"max_batch": batcher.max_batch, "window_ms": batcher.window_s * 1000, **batcher.stats},
        }

    @app.post("/score")
    async def score(request: Request) -> Any:
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype:
            raise RequestError(415, f"POST /score takes application/json, got {ctype!r}; upload meshes to /score_mesh")
        try:
            body = await request.json()
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(400, f"body is not valid JSON ({type(exc).__name__})")
        if isinstance(body, Mapping) and "items" in body:
            items = body["items"]
            if not isinstance(items, list) or not items:
                raise RequestError(422, "'items' must be a non-empty list")
            if len(items) > limits.max_items:
                raise RequestError(422, f"{len(items)} items in one request, over the limit of {limits.max_items}")
            jobs = [_parse_item(it, f"items[{i}]") for i, it in enumerate(items)]
            results = await asyncio.gather(*(batcher.submit(j) for j in jobs))
            return {"results": results}
        job = _parse_item(body, "request")
        return await batcher.submit(job)

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
            with open(path, "wb") as fh:
                fh.write(data)
            loop = asyncio.get_running_loop()
            try:
                groups, warnings = await loop.run_in_executor(mesh_renderer.executor, mesh_renderer.render, path)
            except MeshError as exc:
                raise RequestError(400, f"cannot read mesh {name!r}: {_scrub(exc.reason, tmp)}")
            except Exception as exc:
                raise RequestError(500, f"cannot render mesh {name!r}: {type(exc).__name__}: {_scrub(str(exc), tmp)}")
            warnings = [_scrub(w, tmp) for w in warnings]
        all_modes = {m for _, views in groups for m in views}
        chosen = _select(scorers, all_modes, "request")
        # one job per render group (scorers trained on different protocols/sizes get their own views)
        jobs = [_Job(prompt=prompt, views=views, scorers=[n for n in names if n in chosen], per_view=per_view)
                for names, views in groups]
        parts = await asyncio.gather(*(batcher.submit(j) for j in jobs if j.scorers))
        res: dict[str, Any] = {"scores": {}}
        for part in parts:
            res["scores"].update(part["scores"])
            if part.get("per_view"):
                res.setdefault("per_view", {}).update(part["per_view"])
        res["scores"] = {n: res["scores"][n] for n in chosen if n in res["scores"]}
        res["warnings"] = warnings
        return res

    return app


def serve(scorers: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **kw: Any) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn

    app = create_app(scorers, **kw)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["MicroBatcher", "RequestError", "ServiceLimits", "create_app", "decode_image", "encode_png", "serve"]
