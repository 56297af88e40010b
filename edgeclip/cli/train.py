"""`edgeclip train` (also under torchrun: `torchrun --nproc_per_node N -m edgeclip train ...`).
Every default is TrainConfig's (`default(name)`), never a copy."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import click

from edgeclip.train.config import DEFAULT_MODEL, DEFAULT_WARMUP, DEVICES, LOSSES, PRECISIONS, SCHEDULES, TrainConfig
from edgeclip.train.config import default as d


@click.command()
@click.option("--data", multiple=True, default=d("data"), show_default=True,
              help="Data source (repeatable): builtin:shapes, builtin:digits, a csv/tsv/jsonl file, an image "
                   "folder, or webdataset shards like 'shards/{000..099}.tar'.")
@click.option("--data-weights", default=None, help="Comma-separated sampling weight per --data source.")
@click.option("--model", default=None, help="Model config name (default: the --init/--resume checkpoint's, "
              f"else {DEFAULT_MODEL}).")
@click.option("--out", default=d("out"), show_default=True, type=click.Path(), help="Run directory.")
@click.option("--steps", default=d("steps"), show_default=True, type=int)
@click.option("--batch-size", default=d("batch_size"), show_default=True, type=int, help="Per process.")
@click.option("--lr", default=d("lr"), show_default=True, type=float)
@click.option("--warmup-steps", default=None, type=int,
              help=f"Linear warmup (default: {DEFAULT_WARMUP}, at most a tenth of --steps); longer than --steps is "
                   "refused.")
@click.option("--schedule", default=d("schedule"), show_default=True, type=click.Choice(SCHEDULES))
@click.option("--cooldown-steps", default=d("cooldown_steps"), show_default=True, type=int)
@click.option("--weight-decay", default=d("weight_decay"), show_default=True, type=float)
@click.option("--grad-clip", default=None, type=float, help="Max global gradient norm.")
@click.option("--precision", default=d("precision"), show_default=True, type=click.Choice(PRECISIONS))
@click.option("--accum-steps", default=d("accum_steps"), show_default=True, type=int,
              help="GradCache micro-batches per step (keeps all negatives).")
@click.option("--loss", default=d("loss"), show_default=True, type=click.Choice(LOSSES))
@click.option("--seed", default=d("seed"), show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="torch intra-op threads.")
@click.option("--workers", default=d("workers"), show_default=True, type=int, help="Data loading processes.")
@click.option("--device", default=d("device"), show_default=True, type=click.Choice(DEVICES))
@click.option("--no-augment", is_flag=True, help="No random resized crop.")
@click.option("--log-every", default=d("log_every"), show_default=True, type=int)
@click.option("--save-every", default=d("save_every"), show_default=True, type=int,
              help="Checkpoint every N steps (0: end).")
@click.option("--keep-checkpoints", default=d("keep_checkpoints"), show_default=True, type=int)
@click.option("--eval-every", default=d("eval_every"), show_default=True, type=int,
              help="Zero-shot eval every N steps (0: end).")
@click.option("--resume", default=None, help="'latest' or OUT/checkpoints/step_NNNNNNNN.")
@click.option("--overwrite", is_flag=True, help="Delete a run already in --out and start again (without it, "
              "a run there is refused: continue it with --resume latest).")
@click.option("--init", "init_from", default=None, type=click.Path(), help="Start from these weights (fine-tune).")
@click.option("--lock-image", is_flag=True, help="Freeze the image tower (LiT).")
@click.option("--lock-text", is_flag=True, help="Freeze the text tower.")
@click.option("--force-activation", is_flag=True, help="Allow --init weights with another activation.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--channels-last", is_flag=True,
              help="NHWC images and conv weights: faster convolutions (ResNets, conv stems) on CUDA.")
@click.option("--max-bad-steps", default=d("max_bad_steps"), show_default=True, type=int)
@click.option("--no-progress", is_flag=True, help="No progress bar (the JSONL log is still written).")
def train(**options: object) -> None:
    """Train (or fine-tune) a CLIP model; writes checkpoints and a JSONL log under --out."""
    from edgeclip.train.loop import train as run_training

    result = run_training(train_config(**options))  # type: ignore[arg-type]
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun (or SLURM, mapped on start): every rank returns it
        return
    click.echo(json.dumps(asdict(result), indent=2, allow_nan=False))  # NaN is not JSON: unknowns are null


def train_config(data: tuple[str, ...], data_weights: str | None, init_from: str | None, no_augment: bool,
                 compile_: bool, no_progress: bool, **kw: object) -> TrainConfig:
    """The TrainConfig that the command's options describe."""
    from edgeclip.errors import ConfigError

    try:
        weights = [float(w) for w in data_weights.split(",")] if data_weights else None
    except ValueError as e:
        raise ConfigError(f"--data-weights must be comma-separated numbers, got {data_weights!r}") from e
    return TrainConfig(data=list(data), data_weights=weights, init=init_from, augment=not no_augment,
                       compile=compile_, progress=not no_progress, **kw)  # type: ignore[arg-type]
