"""`edgeclip quickstart`: the whole pipeline on built-in data, on this machine, in minutes
(edgeclip/quickstart.py runs it; this is its command line)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.train.config import default


@click.command()
@click.option("--out", default="quickstart", show_default=True, type=click.Path(), help="Output directory.")
@click.option("--steps", default=default("steps"), show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=default("seed"), show_default=True, type=int)
@click.option("--no-progress", is_flag=True)
def quickstart(out: str, steps: int, seed: int, no_progress: bool) -> None:
    """Train a small CLIP on builtin:shapes, export it, classify held-out images, report."""
    from edgeclip.quickstart import run_quickstart, summary_lines

    summary = run_quickstart(Path(out), steps=steps, seed=seed, progress=not no_progress, log=click.echo)
    for line in summary_lines(summary):
        click.echo(line)
