"""How every ``rewardkit`` command reports a user's mistake: one line on stderr, exit code 2.

Exit codes mean one thing each across the CLI:

- 0: all done;
- 1: some inputs failed (a mesh that cannot be read, ...) and the rest were processed;
- 2: usage or configuration error (bad option, bad config file or ``--set`` override, missing input
  file, a device this machine does not have): nothing was done.

Raise :class:`UserError` from a command (or let a :class:`rewardkit.config.ConfigError` /
:class:`rewardkit.devices.DeviceError` escape from the library): the entry point prints
``rewardkit <cmd>: error: <message>`` without a traceback and exits with 2.
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2

PROG_KEY = "rewardkit.prog"  # ctx.meta: "rewardkit <cmd>", set when the group resolves a command


class UserError(click.ClickException):
    """A mistake of the user (usage, configuration, missing input): printed as one line, exit code 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()) if "\n" in str(message) else str(message))
        ctx = click.get_current_context(silent=True)
        prog = None
        if ctx is not None:
            prog = ctx.command_path if ctx.parent is not None else ctx.meta.get(PROG_KEY, ctx.command_path)
        self.prog = prog or "rewardkit"

    def show(self, file=None) -> None:  # click's signature
        click.echo(f"{self.prog}: error: {self.format_message()}", err=True, file=file)


# Library errors about what the user named (a table, a backbone, a scorer directory, a Label Studio
# server): "module:class", checked only when that module is already loaded (so nothing heavy is imported).
_DOMAIN_ERRORS = (
    "rewardkit.data.tables:TableError",
    "rewardkit.models.backbone:BackboneError",
    "rewardkit.scoring.errors:ScorerError",
    "rewardkit.annotation.errors:AnnotationError",
    "rewardkit.engines.manifest:ManifestError",
    "rewardkit.engines.jobs:EngineError",
)


class CommandGroup(click.Group):
    """A click group that records the resolved command path (``rewardkit annotate up``) for error lines."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            ctx.meta[PROG_KEY] = f"{ctx.command_path} {cmd.name if name is None else name}"
        return name, cmd, rest


def user_errors() -> tuple[type[BaseException], ...]:
    """The library exceptions that mean a user's mistake (turned into :class:`UserError` by the CLI):
    configuration and device errors, and the domain errors above once their module is loaded."""
    import sys

    from rewardkit.config import ConfigError
    from rewardkit.devices import DeviceError

    found: list[type[BaseException]] = [ConfigError, DeviceError]
    for target in _DOMAIN_ERRORS:
        module, name = target.split(":")
        if module in sys.modules and hasattr(sys.modules[module], name):
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


__all__ = ["EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "UserError", "user_errors"]
