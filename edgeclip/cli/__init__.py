"""The `edgeclip` command: a click group whose subcommands are imported only when used."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from edgeclip import __version__
from edgeclip.errors import EdgeclipError

# command -> "module:attribute"; importing a command's module is what pulls torch or an SDK
COMMANDS: dict[str, str] = {
    "train": "edgeclip.cli.train:train",
    "import": "edgeclip.cli.importer:import_weights",
    "export": "edgeclip.cli.export:export",
    "classify": "edgeclip.cli.runtime:classify",
    "embed": "edgeclip.cli.runtime:embed",
    "labels": "edgeclip.cli.runtime:labels",
    "inspect": "edgeclip.cli.runtime:inspect",
    "bench": "edgeclip.cli.bench:bench",
    "quickstart": "edgeclip.cli.quickstart:quickstart",
}


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
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeclipError as e:
            raise UserError(e) from None


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
