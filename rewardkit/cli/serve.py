"""``rewardkit serve``: the HTTP scorer service (see :mod:`rewardkit.scoring.service`)."""

from __future__ import annotations


import click

from rewardkit.cli.errors import UserError


@click.command()
@click.option("--scorer", "scorers", multiple=True, required=True, metavar="DIR",
              help="Exported scorer or scorer-set directory (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0 for all).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... or auto.")
@click.option("--max-batch", default=32, show_default=True, type=int, help="Most items scored in one forward.")
@click.option("--batch-window-ms", default=5.0, show_default=True, type=float,
              help="How long the first waiting item waits for others to join its batch.")
@click.option("--max-views", default=32, show_default=True, type=int, help="Most views per mode in one item.")
@click.option("--max-items", default=64, show_default=True, type=int, help="Most items in one request.")
@click.option("--max-request-mb", default=64.0, show_default=True, type=float, help="Largest request body.")
@click.option("--max-image-side", default=1024, show_default=True, type=int, help="Largest view image side (px).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(scorers, host, port, device, max_batch, batch_window_ms, max_views, max_items, max_request_mb,
          max_image_side, log_level) -> None:
    """Serve exported scorers over HTTP: POST /score (JSON, base64 PNG views), POST /score_mesh (upload),
    GET /health. Concurrent requests are batched into one forward per scorer."""
    from rewardkit.devices import resolve_device
    from rewardkit.scoring.api import as_scorer_set
    from rewardkit.scoring.export import ScorerError
    from rewardkit.scoring.service import ServiceLimits, serve as run

    device = resolve_device(device, what="--device")  # DeviceError: one line, exit 2
    try:
        scorer_set = as_scorer_set(list(scorers), device=device)
    except ScorerError as exc:  # bad scorer directory or version mismatch
        raise UserError(str(exc)) from None
    limits = ServiceLimits(max_request_bytes=int(max_request_mb * 1024 * 1024), max_items=max_items,
                           max_views=max_views, max_image_side=max_image_side,
                           max_mesh_bytes=int(max_request_mb * 1024 * 1024))
    for name, s in scorer_set.items():
        click.echo(f"serving {name}: {s!r} from {s.source}", err=True)
    run(scorer_set, host=host, port=port, log_level=log_level, limits=limits, max_batch=max_batch,
        batch_window_ms=batch_window_ms)
