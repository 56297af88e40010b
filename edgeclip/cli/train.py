"""`edgeclip train`."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from edgeclip.train.loop import TrainConfig
from edgeclip.train.loop import train as run_training


@click.command()
@click.option("--data", default="builtin:shapes", show_default=True, help="Training data source.")
@click.option("--model", default="edge-tiny", show_default=True, help="Model config name.")
@click.option("--out", default="checkpoints/run", show_default=True, type=click.Path(), help="Checkpoint directory.")
@click.option("--steps", default=1000, show_default=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--warmup-steps", default=100, show_default=True, type=int)
@click.option("--weight-decay", default=0.1, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="torch intra-op threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar (the JSONL log is still written).")
def train(
    data: str, model: str, out: str, steps: int, batch_size: int, lr: float, warmup_steps: int,
    weight_decay: float, seed: int, threads: int | None, no_progress: bool,
) -> None:
    """Train a CLIP model and write a checkpoint directory."""
    cfg = TrainConfig(
        model=model, data=data, out=out, steps=steps, batch_size=batch_size, lr=lr,
        warmup_steps=min(warmup_steps, steps), weight_decay=weight_decay, seed=seed, threads=threads,
        progress=not no_progress,
    )
    result = run_training(cfg)
    click.echo(json.dumps(asdict(result), indent=2))
