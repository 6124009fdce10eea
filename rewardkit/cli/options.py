"""Options several ``rewardkit`` commands share: a config file and ``--set`` overrides of the config grammar
(:mod:`rewardkit.config`), the same names and parsing in every command that takes a config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def config_options(file_help: str, set_example: str, *, required: bool = False) -> Callable[[Any], Any]:
    """``--config FILE`` (parameter ``config_path``) and repeatable ``--set KEY=VALUE`` (parameter ``sets``)."""
    def wrap(f: Any) -> Any:
        f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                         help=f"Override any config field; dotted keys for nested ones ({set_example}), values "
                              "parsed as YAML. Repeatable.")(f)
        return click.option("--config", "config_path", type=click.Path(dir_okay=False), required=required,
                            default=None, help=file_help)(f)
    return wrap
