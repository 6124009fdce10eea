"""The scorer service's limits and connection guard: :class:`ServiceLimits` (every request limit, one place),
the shared token (:func:`read_token`, :func:`exposure_warning`), :class:`RequestGuard` (the ASGI middleware in
front of every route: token, concurrency slots, body size and body read time) and :func:`server_config` (the
uvicorn configuration that enforces the connection-level limits: header timeout and size, keep-alive,
connection count). docs/security.md has the table of limits.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from rewardkit.scoring.errors import RequestError

TOKEN_ENV = "REWARDKIT_SERVICE_TOKEN"
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


class RequestGuard:
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
            return await send_json(send, 401, {"detail": "missing or wrong token: send 'Authorization: Bearer "
                                                          "<token>' (the service was started with a token)"},
                                    extra=[(b"www-authenticate", b"Bearer")])
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return await send_json(send, 400, {"detail": f"bad Content-Length {v[:40]!r}"})
                if n > lim.max_request_bytes:
                    return await send_json(send, 413, {"detail": f"request body of {n} bytes exceeds the limit of "
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
            await send_json(send, error.status, {"detail": error.detail})


async def send_json(send: Any, status: int, body: dict, extra: list | None = None) -> None:
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


__all__ = ["MiB", "TOKEN_ENV", "RequestGuard", "ServiceLimits", "exposure_warning", "read_token", "send_json", "server_config"]
