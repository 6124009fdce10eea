"""The scorer service as Ray Serve replicas: ``rewardkit serve --engine ray --replicas N``.

Each replica is a Ray actor that builds the very app of :func:`rewardkit.scoring.service.create_app`
(``serve.ingress`` with the app built in the replica, after its constructor), so the HTTP contract, the
token, the request guard and every :class:`ServiceLimits` limit that the app enforces are the uvicorn
engine's. Each replica loads its own scorers, renders uploads in its own render thread (its own GL context,
created in that thread), and batches concurrent requests with the app's own
:class:`~rewardkit.scoring.service_batching.MicroBatcher`: N replicas render and score N meshes at once.
Serve's ``@serve.batch`` is not used (one batching mechanism; the micro-batcher's per-scorer, per-shape and
pixel-capped forwards and its ``/health`` statistics stay the same under both engines).

Serve's HTTP proxy terminates the connections, so the connection-level limits of :func:`server_config`
(``max_connections``, ``header_timeout_s``, ``max_header_bytes``) are not applied here: put your TLS proxy
(docs/security.md) in front, as for any exposed service; ``keep_alive_s`` is passed to the proxy. Serve
routes at most ``max_concurrent_requests + 2`` requests to one replica at once (the app's guard still lets
``max_concurrent_requests`` of them read their bodies; the two more slots keep ``/health`` answering).

From Python::

    from rewardkit.scoring.service_ray import build_app, run
    run(["scorers/"], replicas=2, port=8000)                   # blocks; Ctrl-C stops Serve

or with ``serve run`` (the scorer folder must be readable on every node)::

    serve run rewardkit.scoring.service_ray:app_builder scorer=scorers/ replicas=2 device=cpu

Needs ``pip install 'rewardkit[ray]'`` (Ray Serve); nothing else in rewardkit imports Ray.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import fields
from typing import Any

from rewardkit.scoring.errors import ScoringError
from rewardkit.scoring.service import create_app
from rewardkit.scoring.service_limits import ServiceLimits, exposure_warning

RAY_EXTRA = "ray"
APP_NAME = "rewardkit-scorer"
DEPLOYMENT_NAME = "ScorerReplica"


class RayNotInstalled(ScoringError, ModuleNotFoundError):
    """Ray Serve is missing: the message names the extra to install."""


def _serve_module() -> Any:
    try:
        from ray import serve
    except ModuleNotFoundError as exc:
        err = RayNotInstalled(f"the ray engine needs Ray Serve, which the core install leaves out: "
                              f"pip install 'rewardkit[{RAY_EXTRA}]'")
        err.name = exc.name
        raise err from None
    return serve


class _ScorerReplicaBody:
    """One replica: keeps the app's arguments; Serve calls ``__serve_build_asgi_app__`` in the replica."""

    def __init__(self, scorers: Any, options: dict[str, Any]) -> None:
        self._scorers, self._options = scorers, dict(options)

    def __serve_build_asgi_app__(self) -> Any:
        from rewardkit.devices import resolve_device

        opts = dict(self._options)
        opts["limits"] = ServiceLimits(**opts.get("limits", {}))
        opts["device"] = resolve_device(opts.get("device") or "auto", what="device")
        return create_app(self._scorers, **opts)


def build_app(scorers: Any, *, replicas: int = 2, limits: ServiceLimits | None = None, max_batch: int = 32,
              batch_window_ms: float = 5.0, device: str | None = None, token: str | None = None,
              num_cpus: float = 1.0, num_gpus: float = 0.0) -> Any:
    """A Ray Serve application of ``replicas`` copies of the scorer app (``serve.run`` it). ``scorers``:
    scorer folders or Hub ids (each replica loads them; a folder must be readable on every node) or a
    ScorerSet (shipped to the replicas through Ray). ``num_cpus`` / ``num_gpus``: Ray resources per replica
    (``num_gpus=1`` with ``device="cuda"`` puts one replica on each GPU). ``token`` travels in the
    deployment's arguments (stored by Ray's control store: see docs/security.md)."""
    serve = _serve_module()
    if int(replicas) < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    limits = limits or ServiceLimits()
    options = {"limits": limits.to_dict(), "max_batch": max_batch, "batch_window_ms": batch_window_ms,
               "device": device, "token": token}
    ingress = serve.ingress()(type(DEPLOYMENT_NAME, (_ScorerReplicaBody,), {"__module__": __name__}))
    deployment = serve.deployment(
        ingress, name=DEPLOYMENT_NAME, num_replicas=int(replicas),
        max_ongoing_requests=int(limits.max_concurrent_requests) + 2,
        ray_actor_options={"num_cpus": float(num_cpus), "num_gpus": float(num_gpus)},
        health_check_period_s=2.0, graceful_shutdown_timeout_s=5.0)
    return deployment.bind(scorers, options)


def start(scorers: Any, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          ray_init: dict[str, Any] | None = None, logging_config: dict[str, Any] | None = None, **kw: Any) -> Any:
    """Start Ray (``address``: ``auto``, ``ray://host:10001``, or None for a local one) and Serve on
    ``host:port``, deploy :func:`build_app` (``kw``) and wait until every replica is up -> its
    DeploymentHandle. ``logging_config``: Serve's (e.g. ``{"encoding": "JSON", "logs_dir": DIR}``: one
    access line per request, with its ``request_id``, the client's ``X-Request-Id``)."""
    serve = _serve_module()
    import ray

    if not ray.is_initialized():
        ray.init(address=address, **(ray_init or {}))
    limits = kw.get("limits") or ServiceLimits()
    serve.start(http_options={"host": host, "port": int(port),
                              "keep_alive_timeout_s": max(1, int(round(limits.keep_alive_s)))})
    return serve.run(build_app(scorers, **kw), name=APP_NAME, route_prefix="/", logging_config=logging_config)


def run(scorers: Any, *, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> None:
    """Serve until Ctrl-C or SIGTERM (then Serve is shut down): :func:`start` and wait."""
    warning = exposure_warning(host, kw.get("token"))
    if warning:
        print(warning, file=sys.stderr)
    serve = _serve_module()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGTERM, _stop)
    try:
        start(scorers, host=host, port=port, **kw)
        print(f"serving {kw.get('replicas', 2)} replicas on http://{host}:{port} (Ray Serve); Ctrl-C stops",
              file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping Ray Serve", file=sys.stderr)
        serve.shutdown()


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run rewardkit.scoring.service_ray:app_builder scorer=DIR[,DIR] replicas=N device=cpu
    max_batch=32 batch_window_ms=5 num_cpus=1 num_gpus=0 token_file=FILE <ServiceLimits field>=value``."""
    from rewardkit.scoring.service_limits import read_token

    args = dict(args)
    limit_names = {f.name: f.type for f in fields(ServiceLimits)}
    limits = {k: (float(args.pop(k)) if "float" in str(t) else int(args.pop(k)))
              for k, t in list(limit_names.items()) if k in args}
    scorers = [s for s in args.pop("scorer", "").split(",") if s]
    if not scorers:
        raise ValueError("serve run ...:app_builder needs scorer=DIR (comma-separated for several)")
    kw: dict[str, Any] = {"limits": ServiceLimits(**limits), "token": read_token(args.pop("token_file", None))}
    for key, cast in (("replicas", int), ("max_batch", int), ("batch_window_ms", float), ("num_cpus", float),
                      ("num_gpus", float), ("device", str)):
        if key in args:
            kw[key] = cast(args.pop(key))
    if args:
        raise ValueError(f"serve run ...:app_builder: unknown arguments {sorted(args)}")
    return build_app(scorers, **kw)


__all__ = ["APP_NAME", "DEPLOYMENT_NAME", "RAY_EXTRA", "RayNotInstalled", "app_builder", "build_app", "run", "start"]
