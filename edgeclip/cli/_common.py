"""Helpers shared by the CLI commands: each command module imports these from here, never from
another command's module."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.errors import ConfigError

TRUSTED_KEY = click.option(
    "--trusted-key", "trusted_key", multiple=True, type=click.Path(),
    help="Public key file to trust (repeatable): refuse bundles not signed by one of them. "
         "Default: the EDGECLIP_TRUSTED_KEYS policy, if set.")
STALE_SIGNATURE = ("note: the manifest changed, so its signature (manifest.sig) no longer held and was removed; "
                   "sign the bundle again: `edgeclip sign BUNDLE --key KEY`")


def csv_list(value: str | None) -> list[str] | None:
    """'a, b,,c' -> ['a', 'b', 'c']; None for an empty option."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def read_lines(path: str, what: str) -> list[str]:
    """The non-empty, non-comment lines of a text file (class names, templates)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]
