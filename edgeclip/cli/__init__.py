"""The `edgeclip` command: a click group whose subcommands are imported only when used."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from edgeclip import __version__
from edgeclip._deps import EXTRAS
from edgeclip.errors import EdgeclipError, MissingDependencyError

# command -> "module:attribute"; importing a command's module is what pulls torch or an SDK
COMMANDS: dict[str, str] = {
    "train": "edgeclip.cli.train:train",
    "import": "edgeclip.cli.importer:import_weights",
    "export": "edgeclip.cli.export:export",
    "classify": "edgeclip.cli.runtime:classify",
    "embed": "edgeclip.cli.runtime:embed",
    "labels": "edgeclip.cli.runtime:labels",
    "inspect": "edgeclip.cli.runtime:inspect",
    "keys": "edgeclip.cli.fleet:keys",
    "sign": "edgeclip.cli.fleet:sign",
    "install": "edgeclip.cli.fleet:install",
    "rollback": "edgeclip.cli.fleet:rollback",
    "bench": "edgeclip.cli.bench:bench",
    "quickstart": "edgeclip.cli.quickstart:quickstart",
}

# the extra that installs what a heavy command needs (torch and more); other commands name the
# extra of the module that is missing (`_deps.EXTRAS`)
COMMAND_EXTRAS: dict[str, str] = {"train": "train", "import": "train", "export": "export", "quickstart": "train,export"}


def missing_dependency(command: str, error: ModuleNotFoundError) -> MissingDependencyError | None:
    """The typed error for an optional package that a command could not import; None when the
    missing module is not an optional dependency (a bug, which keeps its traceback)."""
    root = (error.name or "").partition(".")[0]
    if root not in EXTRAS:
        return None
    extra = COMMAND_EXTRAS.get(command, EXTRAS[root])
    return MissingDependencyError(f"'{root}' is not installed but `edgeclip {command}` needs it",
                                  fix=f'pip install "edgeclip[{extra}]"')


class UserError(click.ClickException):
    """An EdgeclipError shown as `Error: ...` with its exit code, never a traceback."""

    def __init__(self, error: EdgeclipError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code  # type: ignore[misc]  # click declares it on the class


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[cmd_name].partition(":")
        try:
            cmd: click.Command = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as e:
            missing = missing_dependency(cmd_name, e)
            if missing is None:
                raise
            return _unavailable(cmd_name, missing)
        return cmd

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta["edgeclip.command"] = name  # for the missing-package error raised while it runs
        return name, cmd, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeclipError as e:
            raise UserError(e) from None
        except ModuleNotFoundError as e:  # a command imports torch or an SDK only when it runs
            missing = missing_dependency(ctx.meta.get("edgeclip.command") or "", e)
            if missing is None:
                raise
            raise UserError(missing) from None


def _unavailable(name: str, error: MissingDependencyError) -> click.Command:
    """A stand-in for a command whose module cannot be imported: listed by --help, and running it
    (with any arguments) ends in the missing-package error."""

    def fail(args: tuple[str, ...]) -> None:
        raise error

    return click.Command(name, callback=fail, params=[click.Argument(["args"], nargs=-1)],
                         help=f"(unavailable: {error.fix})", add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeclip")
def cli() -> None:
    """edgeclip: train CLIP, export split encoders to edge targets, classify on device."""


def main() -> None:
    try:
        cli.main(prog_name="edgeclip")
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        click.echo("Aborted.", err=True)
        sys.exit(130)
