"""`edgeclip bench`."""

from __future__ import annotations

import click

from edgeclip.cli._common import csv_list
from edgeclip.errors import ConfigError


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"--batch-sizes must be comma-separated integers, got {value!r}") from e


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--backends", default=None, help="Comma-separated backends (default: every usable one).")
@click.option("--precisions", default=None, help="Comma-separated precisions (default: all in the bundle).")
@click.option("--encoders", default="image,text", show_default=True)
@click.option("--batch-sizes", default="1,8", show_default=True)
@click.option("--threads", default=None, type=click.IntRange(min=1))
@click.option("--runs", default=None, type=int, help="Timed runs per row (default: --min-time).")
@click.option("--min-time", default=2.0, show_default=True, type=float, help="Seconds of timing per batch size.")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0))
@click.option("--baseline", default="torch", show_default=True, type=click.Choice(["torch", "none"]))
@click.option("--checkpoint", default=None, type=click.Path(), help="Checkpoint for the torch baseline.")
@click.option("--eval", "eval_data", default=None, help="builtin:shapes or an image folder (one sub-folder per class).")
@click.option("--no-end-to-end", is_flag=True, help="Skip the decode+preprocess+infer rows.")
@click.option("--camera-sizes", default="1280x720,4032x3024", show_default=True,
              help="End-to-end rows (batch 1) on JPEGs of these sizes, made from the built-in data; '' for none.")
@click.option("--device", default="CPU", show_default=True,
              help="Device for every backend (openvino: CPU, GPU, NPU, AUTO; onnxruntime: CPU, CUDA). A row whose "
                   "accelerator left the CPU to run it is flagged, with a warning.")
@click.option("--no-memory", is_flag=True, help="Skip peak-RSS measurement (a fresh process per row).")
@click.option("--label-classes", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Labels table: encode this many generated class names with each text artifact (0: skip).")
@click.option("--label-templates", default=7, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", default=None, type=click.Path())
@click.option("--markdown", "md_path", default=None, type=click.Path())
@click.option("--csv", "csv_path", default=None, type=click.Path())
@click.option("--plot", "plot_path", default=None, type=click.Path())
@click.option("--compare", "compare_path", default=None, type=click.Path(),
              help="An earlier --json report to gate against. Each row is judged on its speed-up over the "
                   "torch baseline timed in the same run (speedup_vs_baseline), not on raw medians, which "
                   "drift with the machine: a row regresses when old ratio / new ratio - 1 exceeds "
                   "--max-regression, and the command exits 1. Rows without a baseline ratio in both "
                   "reports (--baseline none) fall back to median_ms, marked 'raw ms'.")
@click.option("--max-regression", default=0.1, show_default=True, type=float,
              help="Allowed loss of speed-up over the baseline, as a fraction (0.1 = 10 %).")
def bench(
    bundle: str, backends: str | None, precisions: str | None, encoders: str, batch_sizes: str,
    threads: int | None, runs: int | None, min_time: float, warmup: int, baseline: str, checkpoint: str | None,
    eval_data: str | None, no_end_to_end: bool, camera_sizes: str, device: str, no_memory: bool,
    label_classes: int, label_templates: int, json_path: str | None, md_path: str | None,
    csv_path: str | None, plot_path: str | None, compare_path: str | None, max_regression: float,
) -> None:
    """Latency, size and accuracy of every artifact in BUNDLE, against a torch baseline.

    OpenVINO rows are labelled with the precision hint in effect, e.g. openvino-fp32(bf16-hint) on
    CPUs with AVX-512 BF16 or AMX, where an f32-hint row is added beside it. With --eval, classes are
    matched to the label set by name; eval classes missing from it are an error.
    """
    from pathlib import Path

    from edgeclip.bench.inputs import parse_sizes
    from edgeclip.bench.report import compare, load_report, print_table, write_outputs
    from edgeclip.bench.run import BenchConfig, run_bench

    old = load_report(compare_path) if compare_path else None  # fail on a bad file before measuring
    if baseline == "torch" and checkpoint is None:
        click.echo("note: no --checkpoint, so no torch baseline (use --baseline none to silence)", err=True)
        baseline = "none"
    cfg = BenchConfig(
        bundle=Path(bundle), backends=csv_list(backends), precisions=csv_list(precisions),
        encoders=csv_list(encoders) or [],
        batch_sizes=_ints(batch_sizes), threads=threads, runs=runs, min_time_s=min_time, warmup=warmup,
        baseline=baseline, checkpoint=Path(checkpoint) if checkpoint else None, eval_data=eval_data,
        end_to_end=not no_end_to_end, camera_sizes=parse_sizes(camera_sizes), device=device,
        memory=not no_memory, label_classes=label_classes, label_templates=label_templates,
    )
    report = run_bench(cfg, log=lambda msg: click.echo(msg, err=True))
    print_table(report)
    write_outputs(report, json_path, md_path, csv_path, plot_path)
    if old is not None:
        deltas, failed = compare(report, old, max_regression)
        width = max((len(d["key"]) for d in deltas), default=0)
        for d in deltas:
            mark = " REGRESSION" if d["regressed"] else ""
            unit = "x torch" if d["basis"] == "speedup_vs_baseline" else "raw ms"
            click.echo(f"{d['key']:<{width}} {unit} {d['old']:8.3f} -> {d['new']:8.3f} {d['change']:+7.1%}{mark}")
        if failed:
            raise click.ClickException(
                f"speed-up over the torch baseline fell by more than {max_regression:.0%} on some rows")
