"""The ``rewardkit`` command: a thin layer over the library.

Each sub-command lives in its own module under ``rewardkit.cli`` and is imported only when it is
invoked, so ``rewardkit render`` never pays for importing torch, and a broken optional dependency of one
command cannot break the others.

Exit codes (:mod:`rewardkit.cli.errors`): 0 all done; 1 some inputs failed and the rest were processed;
2 usage or configuration error, printed as one line ``rewardkit <cmd>: error: ...`` on stderr.
"""

from __future__ import annotations

import importlib

import click

from rewardkit import __version__
from rewardkit.cli.errors import CommandGroup, UserError, user_errors

# command name -> "module:attribute"; one module per command group.
COMMANDS: dict[str, str] = {
    "render": "rewardkit.cli.render:render",
    "annotate": "rewardkit.cli.annotate:annotate",
    "train": "rewardkit.cli.train:train",
    "score": "rewardkit.cli.score:score",
    "serve": "rewardkit.cli.serve:serve",
    "rl": "rewardkit.cli.rl:rl",
    "demo": "rewardkit.cli.demo:demo",
}


class LazyGroup(CommandGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if importlib.util.find_spec(COMMANDS[name].split(":")[0]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except user_errors() as exc:  # a config or device mistake from the library: one line, exit 2
            raise UserError(str(exc)) from None


@click.group("rewardkit", cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rewardkit")
def main() -> None:
    """rewardkit: render 3D candidates, collect preferences, train and serve per-stage reward models."""


if __name__ == "__main__":  # pragma: no cover
    main()
