"""``rewardkit serve``: the HTTP scorer service (see :mod:`rewardkit.scoring.service`, docs/security.md)."""

from __future__ import annotations


import click

from rewardkit.cli.errors import UserError
# Limit options default to None: the defaults live in one place, rewardkit.scoring.service.ServiceLimits (the
# field named in each help text; table in docs/security.md). Importing it here would import torch for --help.


@click.command()
@click.option("--scorer", "scorers", multiple=True, required=True, metavar="DIR",
              help="Exported scorer or scorer-set directory (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0 for all).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... or auto.")
@click.option("--max-batch", default=32, show_default=True, type=int, help="Most items scored in one forward.")
@click.option("--batch-window-ms", default=5.0, show_default=True, type=float,
              help="How long the first waiting item waits for others to join its batch.")
@click.option("--max-views", default=None, type=int,
              help="Most views per mode in one item (default: ServiceLimits.max_views).")
@click.option("--max-modes", default=None, type=int,
              help="Most render modes in one item (default: ServiceLimits.max_modes).")
@click.option("--max-items", default=None, type=int,
              help="Most items in one request (default: ServiceLimits.max_items).")
@click.option("--max-request-mb", default=None, type=float,
              help="Largest request body (and mesh upload) (default: ServiceLimits.max_request_bytes).")
@click.option("--max-image-side", default=None, type=int,
              help="Largest view image side (px; default: ServiceLimits.max_image_side).")
@click.option("--max-item-pixels", default=None, type=int,
              help="Most decoded view pixels (sum of width*height) in one item; also the most per forward (default: ServiceLimits.max_item_pixels).")
@click.option("--max-request-pixels", default=None, type=int,
              help="Most decoded view pixels (sum of width*height) in one request (default: ServiceLimits.max_request_pixels).")
@click.option("--max-concurrent", default=None, type=int,
              help="Requests read, decoded and scored at once; later ones wait with their body unread (default: ServiceLimits.max_concurrent_requests).")
@click.option("--max-connections", default=None, type=int,
              help="Open connections; more are answered 503 (default: ServiceLimits.max_connections).")
@click.option("--header-timeout", default=None, type=float,
              help="Seconds a connection has to send its request headers (default: ServiceLimits.header_timeout_s).")
@click.option("--body-timeout", default=None, type=float,
              help="Seconds a request has to send its whole body (default: ServiceLimits.body_timeout_s).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File whose first line is a shared token; every endpoint but /health then needs "
                   "'Authorization: Bearer <token>'. Default: $REWARDKIT_SERVICE_TOKEN, else no token.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one uvicorn process; ray: Ray Serve replicas of the same app (needs rewardkit[ray]).")
@click.option("--replicas", default=2, show_default=True, type=int,
              help="--engine ray: replicas, each loading the scorers and rendering uploads in its own process.")
@click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
              help="--engine ray: the Ray cluster to join (default: start a local one).")
@click.option("--replica-cpus", default=1.0, show_default=True, type=float,
              help="--engine ray: CPUs per replica (Ray also sets the replica's OMP_NUM_THREADS to it).")
@click.option("--replica-gpus", default=None, type=float,
              help="--engine ray: GPUs per replica (default: 1 when --device is cuda, else 0).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(scorers, host, port, device, max_batch, batch_window_ms, max_views, max_modes, max_items, max_request_mb,
          max_image_side, max_item_pixels, max_request_pixels, max_concurrent, max_connections, header_timeout,
          body_timeout, token_file, engine, replicas, address, replica_cpus, replica_gpus,
          log_level) -> None:
    """Serve exported scorers over HTTP: POST /score (JSON, base64 PNG views), POST /score_mesh (upload),
    GET /health. Concurrent requests are batched into one forward per scorer. Limits: docs/security.md.
    --engine ray runs --replicas copies of the same app on Ray Serve (docs/scale.md)."""
    from rewardkit.devices import resolve_device
    from rewardkit.scoring.api import as_scorer_set
    from rewardkit.scoring.errors import ScorerError
    from rewardkit.scoring.service import ServiceLimits, read_token, serve as run

    given = {"max_items": max_items, "max_modes": max_modes, "max_views": max_views, "max_image_side": max_image_side,
             "max_item_pixels": max_item_pixels, "max_request_pixels": max_request_pixels,
             "max_concurrent_requests": max_concurrent, "max_connections": max_connections,
             "header_timeout_s": header_timeout, "body_timeout_s": body_timeout}
    if max_request_mb is not None:
        given["max_request_bytes"] = given["max_mesh_bytes"] = int(max_request_mb * 1024 * 1024)
    try:
        token = read_token(token_file)
        limits = ServiceLimits(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if engine == "ray":
        return _serve_ray(list(scorers), host=host, port=port, device=device, limits=limits, token=token,
                          max_batch=max_batch, batch_window_ms=batch_window_ms, replicas=replicas, address=address,
                          replica_cpus=replica_cpus, replica_gpus=replica_gpus)
    device = resolve_device(device, what="--device")  # DeviceError: one line, exit 2
    try:
        scorer_set = as_scorer_set(list(scorers), device=device)
    except ScorerError as exc:  # bad scorer directory or version mismatch
        raise UserError(str(exc)) from None
    for name, s in scorer_set.items():
        click.echo(f"serving {name}: {s!r} from {s.source}", err=True)
    if token:
        click.echo("a token is required (Authorization: Bearer ...) on every endpoint but /health", err=True)
    run(scorer_set, host=host, port=port, log_level=log_level, limits=limits, max_batch=max_batch,
        batch_window_ms=batch_window_ms, token=token)


def _serve_ray(scorers: list[str], *, device: str, replicas: int, address: str | None, replica_cpus: float,
               replica_gpus: float | None, **kw) -> None:
    """``--engine ray``: each replica loads the scorer folders itself (so they must be readable on every node)."""
    from rewardkit.scoring.api import as_scorer_set
    from rewardkit.scoring.errors import ScorerError
    from rewardkit.scoring.service_ray import RayNotInstalled, run

    if replicas < 1:
        raise UserError(f"--replicas must be at least 1, got {replicas}")
    try:
        import ray  # noqa: F401  (fail before loading anything)
        from ray import serve  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("--engine ray needs Ray Serve, which the core install leaves out: "
                        "pip install 'rewardkit[ray]'") from None
    try:
        for name, s in as_scorer_set(scorers, device="cpu").items():  # check the folders here, before Ray starts
            click.echo(f"serving {name}: {s!r} from {s.source} on {replicas} Ray Serve replicas", err=True)
    except ScorerError as exc:
        raise UserError(str(exc)) from None
    gpus = replica_gpus if replica_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
    try:
        run(scorers, replicas=replicas, address=address, device=device, num_cpus=replica_cpus, num_gpus=gpus, **kw)
    except RayNotInstalled as exc:
        raise UserError(str(exc)) from None
