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
# The extras themselves are listed once, in pyproject.toml ([project.optional-dependencies]); the CLI reads them
# from rewardkit's installed metadata. Distributions whose import names are not their normalised names:
IMPORT_NAMES: dict[str, tuple[str, ...]] = {
    "lightning": ("lightning", "pytorch_lightning", "lightning_fabric"),
    "python-multipart": ("multipart", "python_multipart"),
}
_NOT_ADVISED = ("all", "dev")  # extras that only gather others (or the test tools): never the advice


def extras_table(requirements: list[str] | None = None) -> dict[str, set[str]]:
    """extra -> the top-level import names its packages provide, from ``requirements`` (default: rewardkit's
    installed metadata, ``Requires-Dist``), nested ``rewardkit[...]`` extras expanded; in pyproject order."""
    import importlib.metadata
    import re

    if requirements is None:
        try:
            requirements = importlib.metadata.requires("rewardkit") or []
        except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
            requirements = []
    direct: dict[str, set[str]] = {}
    nested: dict[str, set[str]] = {}
    for line in requirements:  # "name[extras] specifiers; extra == 'x'" (PEP 508, as pip writes them)
        spec, _, marker = line.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        head = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", spec)
        if extra is None or head is None:
            continue
        extra, name = extra.group(1), head.group(1).lower().replace("_", "-")
        if name == "rewardkit":
            nested.setdefault(extra, set()).update(e.strip() for e in (head.group(2) or "").split(","))
            direct.setdefault(extra, set())
            continue
        direct.setdefault(extra, set()).update(IMPORT_NAMES.get(name, (name.replace("-", "_"),)))

    def expand(extra: str, seen: frozenset = frozenset()) -> set[str]:
        out = set(direct.get(extra, ()))
        for sub in nested.get(extra, ()):
            if sub not in seen:
                out |= expand(sub, seen | {extra})
        return out

    return {extra: expand(extra) for extra in direct}


def missing_extra(exc: ModuleNotFoundError, command: str | None) -> str | None:
    """One line ``... pip install 'rewardkit[train]'`` when ``exc`` is a missing package of an extra, else
    None (the command's own extra when it brings that package, else the first extra that does)."""
    top = (exc.name or "").split(".")[0]
    table = extras_table()
    own = COMMAND_EXTRAS.get(command or "")
    if own and top in table.get(own, ()):
        extra = own
    else:
        extra = next((e for e, names in table.items() if top in names and e not in _NOT_ADVISED), None)
        if extra is None:
            return None
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
