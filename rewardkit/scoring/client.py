"""A small client for the scorer service (``rewardkit serve``).

::

    from rewardkit.scoring.client import ScorerClient
    client = ScorerClient("http://127.0.0.1:8000")
    client.health()
    client.score_mesh("mesh.glb", "a red chair")            # {"scores": {"global": .., "local": ..}, ...}
    client.score_views("a red chair", {"rgb": views})      # views: [V, 3, H, W] tensor / list of HxWx3 arrays
    client.score_batch([{"prompt": .., "views": {..}}, ...])

Views are sent as base64 PNG (lossless); meshes as a multipart upload (trimesh objects are exported to GLB
in memory). Requests are retried on connection errors, 408, 429 and 5xx with exponential backoff (every endpoint
is idempotent: scoring changes nothing on the server), e.g. when a Ray Serve replica dies under a request
another one answers the retry; other 4xx raise :class:`ScorerServiceError` with the server's message. Each
call sends one ``X-Request-Id`` (the same on its retries), which Ray Serve records in its request logs; a
call returns the first answer it gets, and a request that was answered is never sent again. A service started with a token gets it
from ``token=`` or ``$REWARDKIT_SERVICE_TOKEN``. The wire format is :mod:`rewardkit.scoring.wire`; this
module does not import the server (nor FastAPI).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from rewardkit.scoring.errors import ScorerServiceError
from rewardkit.scoring.wire import encode_views, mesh_upload

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
REQUEST_ID_HEADER = "X-Request-Id"  # one per call, the same on its retries


class ScorerClient:
    """Client of one service. ``token``: the service's shared token (default ``$REWARDKIT_SERVICE_TOKEN``),
    sent as ``Authorization: Bearer <token>``; the RL adapters' ``url=`` mode uses this client, so setting
    the variable is enough there."""

    def __init__(self, url: str, *, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 headers: Mapping[str, str] | None = None, token: str | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.retries, self.backoff = int(retries), float(backoff)
        self.attempts = 0  # HTTP requests sent, retries included
        headers = dict(headers or {})
        token = token if token is not None else (os.environ.get("REWARDKIT_SERVICE_TOKEN") or "").strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ScorerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        last: Exception | None = None
        headers = {REQUEST_ID_HEADER: uuid.uuid4().hex, **kw.pop("headers", {})}
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                r = self._http.request(method, path, headers=headers, **kw)
            except httpx.TransportError as exc:
                last = ScorerServiceError(None, f"cannot reach {self.url}{path}: {type(exc).__name__}: {exc}")
            else:
                if r.status_code < 400:
                    return r.json()
                try:
                    detail = r.json().get("detail", r.text)
                except Exception:
                    detail = r.text
                last = ScorerServiceError(r.status_code, str(detail))
                if r.status_code not in RETRY_STATUS:
                    raise last
            if attempt < self.retries:
                time.sleep(self.backoff * (2 ** attempt))
        assert last is not None
        raise last

    # -------------------------------------------------------------------------------------------------- #
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def score_views(self, prompt: str, views: Mapping[str, Any], *, scorers: Sequence[str] | None = None,
                    per_view: bool = False, request_id: str | None = None) -> dict[str, Any]:
        """Score one sample's rendered views ``{mode: [V, 3, H, W] tensor | list of images}``. ``request_id``:
        the call's ``X-Request-Id`` (default: a new random one)."""
        body: dict[str, Any] = {"prompt": prompt, "views": encode_views(views), "per_view": per_view}
        if scorers is not None:
            body["scorers"] = list(scorers)
        return self._request("POST", "/score", json=body, **_rid(request_id))

    def score_batch(self, items: Sequence[Mapping[str, Any]], *, per_view: bool = False) -> list[dict[str, Any]]:
        """Score several samples in one request: ``[{"prompt": str, "views": {mode: views}, "scorers"?: [..]}]``."""
        payload = []
        for it in items:
            d: dict[str, Any] = {"prompt": it["prompt"], "views": encode_views(it["views"]),
                                 "per_view": it.get("per_view", per_view)}
            if it.get("scorers") is not None:
                d["scorers"] = list(it["scorers"])
            payload.append(d)
        return self._request("POST", "/score", json={"items": payload})["results"]

    def score_mesh(self, mesh: Any, prompt: str, *, scorers: Sequence[str] | None = None,
                   per_view: bool = False, request_id: str | None = None) -> dict[str, Any]:
        """Upload a mesh (path, bytes with a ``.glb`` name, or a trimesh object) and score it server-side.
        ``request_id``: the call's ``X-Request-Id`` (default: a new random one)."""
        name, data = mesh_upload(mesh)
        form: dict[str, Any] = {"prompt": prompt, "per_view": "true" if per_view else "false"}
        if scorers is not None:
            form["scorers"] = ",".join(scorers)
        return self._request("POST", "/score_mesh", files={"file": (name, data, "application/octet-stream")},
                             data=form, **_rid(request_id))


def _rid(request_id: str | None) -> dict[str, Any]:
    return {"headers": {REQUEST_ID_HEADER: str(request_id)}} if request_id else {}


__all__ = ["ScorerClient", "ScorerServiceError", "encode_views"]
