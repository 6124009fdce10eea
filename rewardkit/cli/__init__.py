"""The ``rewardkit`` command: a thin layer over the library.

Each sub-command lives in its own module under ``rewardkit.cli`` and is imported only when it is
invoked, so ``rewardkit render`` never pays for importing torch, and a broken optional dependency of one
command cannot break the others.

Exit codes (:mod:`rewardkit.cli.errors`): 0 all done; 1 some inputs failed and the rest were processed;
2 usage or configuration error, printed as one line ``rewardkit <cmd>: error: ...`` on stderr.
"""

from __future__ import annotations

import importlib
import importlib.util

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
    "eval-gen": "rewardkit.cli.eval_gen:eval_gen",
    "export": "rewardkit.cli.export:export",
}


# command -> the extra that installs what it needs (``pip install rewardkit[<extra>]``); ``score`` is the core
COMMAND_EXTRAS: dict[str, str] = {
    "annotate": "annotate", "train": "train", "export": "train", "serve": "serve", "rl": "rl", "demo": "pipeline",
}
# third-party packages of the extras (top-level import names) -> the extra that brings them
PACKAGE_EXTRAS: dict[str, str] = {
    "label_studio_sdk": "annotate", "krippendorff": "annotate", "polars": "annotate",
    "lightning": "train", "pytorch_lightning": "train", "lightning_fabric": "train", "datasets": "train",
    "matplotlib": "train", "transformers": "rl", "peft": "rl",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "dvc": "pipeline",
}


_EXTRA_PACKAGES: dict[str, tuple[str, ...]] = {
    "annotate": ("label_studio_sdk", "krippendorff", "polars"),
    "train": ("lightning", "pytorch_lightning", "lightning_fabric", "datasets", "matplotlib", "polars", "transformers"),
    "serve": ("fastapi", "uvicorn", "multipart", "python_multipart"),
    "rl": ("lightning", "pytorch_lightning", "lightning_fabric", "transformers", "matplotlib", "polars", "peft"),
    "pipeline": tuple(PACKAGE_EXTRAS),
}


def missing_extra(exc: ModuleNotFoundError, command: str | None) -> str | None:
    """One line ``... pip install 'rewardkit[train]'`` when ``exc`` is a missing package of an extra, else
    None (the command's own extra when it brings that package, else the package's extra)."""
    top = (exc.name or "").split(".")[0]
    if top not in PACKAGE_EXTRAS:
        return None
    own = COMMAND_EXTRAS.get(command or "")
    extra = own if own and top in _EXTRA_PACKAGES[own] else PACKAGE_EXTRAS[top]
    return f"this command needs the {top!r} package, which the core install leaves out: pip install 'rewardkit[{extra}]'"


class LazyGroup(CommandGroup):
    """The ``rewardkit`` command group: each subcommand's module (``COMMANDS``) is imported only when the
    command runs, and a missing extra is reported as the ``pip install 'rewardkit[...]'`` to run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if importlib.util.find_spec(COMMANDS[name].split(":")[0]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        try:
            return getattr(importlib.import_module(module_name), attr)
        except ModuleNotFoundError as exc:
            advice = missing_extra(exc, cmd_name)
            if advice is None:
                raise
            raise UserError(advice) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except user_errors() as exc:  # a config or device mistake from the library: one line, exit 2
            raise UserError(str(exc)) from None
        except ModuleNotFoundError as exc:  # a package of an extra that is not installed: one line, exit 2
            advice = missing_extra(exc, ctx.invoked_subcommand)
            if advice is None:
                raise
            raise UserError(advice) from None


@click.group("rewardkit", cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rewardkit")
def main() -> None:
    """rewardkit: render 3D candidates, collect preferences, train and serve per-stage reward models."""


if __name__ == "__main__":  # pragma: no cover
    main()
