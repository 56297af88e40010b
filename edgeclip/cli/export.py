"""`edgeclip export`."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.bundle import SIGNATURE, Calibration
from edgeclip.cli._common import STALE_SIGNATURE, csv_list, read_lines
from edgeclip.errors import ConfigError
from edgeclip.export.capabilities import CAPABILITIES, all_targets


def _calibration_line(c: Calibration) -> str:
    m = c.measured
    drop = f", top-1 drop {m.top1_drop:.2f} points" if m.top1_drop is not None else ""
    speed = len(c.details.get("excluded_for_speed", []))
    return (f"int8 {c.method} on {c.size} {c.inputs}: held-out ({m.heldout_size}) cosine min "
            f"{m.cosine_min:.5f} p1 {m.cosine_p1:.5f} mean {m.cosine_mean:.5f}{drop}; "
            f"{len(c.excluded_layers)} layer(s) kept float" + (f" ({speed} of them for speed)" if speed else ""))


@click.command(epilog="Targets and precisions:\n\n\b\n" + "\n".join(
    f"  {c.target:<9} {', '.join(c.precisions):<34} builds on {c.builds_on}" for c in CAPABILITIES.values()))
@click.argument("checkpoint", type=click.Path())
@click.option("--target", "targets", default="onnx", show_default=True,
              help=f"Comma-separated targets ({', '.join(CAPABILITIES)}) or 'all' ({', '.join(all_targets())}).")
@click.option("--precision", default=None,
              help="Comma-separated precisions (default: each target's first). With --target all, each target "
                   "exports those it supports.")
@click.option("--encoders", default="image,text", show_default=True, help="image, text or image,text.")
@click.option("--labels", "labels_file", type=click.Path(), help="Class names, one per line.")
@click.option("--templates", "templates_file", type=click.Path(), help="Prompt templates with '{}', one per line.")
@click.option("--label-name", default="default", show_default=True, help="Name of the label set in the bundle.")
@click.option("--coreml-target", default=None, help="CoreML deployment target (default iOS16).")
@click.option("--coreml-flexible-batch", is_flag=True, default=None, help="CoreML image tower with a batch range.")
@click.option("--coreml-image-input", is_flag=True, default=None, help="CoreML image input with mean/std folded in.")
@click.option("--image-input", type=click.Choice(["float32", "uint8"]), default=None,
              help="onnx/openvino image input: float32 NCHW [default] or uint8 NHWC normalised in the graph.")
@click.option("--trt-min-batch", type=click.IntRange(min=1), default=None)
@click.option("--trt-opt-batch", type=click.IntRange(min=1), default=None)
@click.option("--trt-max-batch", type=click.IntRange(min=1), default=None)
@click.option("--rknn-platform", default=None, help="RKNN: the board's chip (rk3588|rk3576|rk3568|rk3566|rk3562).")
@click.option("--toolkit-python", default=None, help="RKNN: the Python of an rknn-toolkit2 environment "
              "[$EDGECLIP_RKNN_PYTHON, else edgeclip's cached one].")
@click.option("--calib", default=None,
              help="INT8 calibration images: a folder (recursive), a .csv/.tsv with a filepath column, a webdataset "
                   ".tar or builtin:shapes. Required for --precision int8.")
@click.option("--calib-size", type=click.IntRange(min=2), default=None, help="Images to read from --calib [300].")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy"]), default=None,
              help="Activation range estimation [minmax].")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=None,
              help="INT8 guard: largest zero-shot top-1 drop vs fp32 on held-out images, in points [1.0].")
@click.option("--min-cosine", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="INT8 guard: smallest held-out embedding cosine vs fp32 [0.995].")
@click.option("--no-speed-pass", is_flag=True, default=None,
              help="INT8 (onnx, openvino): quantize every layer the guard allows, even kinds of layers measured "
                   "slower in int8 on this machine (by default they stay float; the bundle records the timings).")
@click.option("--out", required=True, type=click.Path(),
              help="Bundle directory to create, or to add to (only from the same weights).")
@click.option("--overwrite", is_flag=True,
              help="Replace the bundle at --out (atomically) instead of adding to it.")
def export(
    checkpoint: str, targets: str, precision: str | None, encoders: str, labels_file: str | None,
    templates_file: str | None, label_name: str, out: str, overwrite: bool, **options: object,
) -> None:
    """Export the split image/text encoders of CHECKPOINT into a bundle, validated against torch."""
    from edgeclip.export.driver import export_bundle

    classes = read_lines(labels_file, "labels") if labels_file else None
    if classes is not None and not classes:
        raise ConfigError(f"labels file {labels_file} has no class names", fix="one class name per line")
    templates = read_lines(templates_file, "templates") if templates_file else None
    if templates is not None and classes is None:
        raise ConfigError("--templates needs --labels")
    was_signed = (Path(out) / SIGNATURE).is_file()
    result = export_bundle(
        checkpoint, out,
        targets=csv_list(targets) or [],
        precision=csv_list(precision),
        encoders=csv_list(encoders) or [],
        labels={label_name: (classes, templates)} if classes is not None else None,
        options={k: v for k, v in options.items() if v is not None},
        overwrite=overwrite,
    )
    for a in result.artifacts:
        v = a.validation
        numbers = (f"cosine_min {v.cosine_min:.7f}  max_abs {v.max_abs:.2e}"
                   if v.cosine_min is not None and v.max_abs is not None else "spec checked; numerics need its device")
        if v.heldout is not None:  # INT8: judged on held-out inputs; the probes are informational
            numbers = (f"held-out cosine_min {v.heldout.cosine_min:.5f}  (probes, informational: "
                       f"cosine_min {v.cosine_min:.5f})")
        click.echo(f"{a.key:<26} {numbers}  [{v.checked_with}]")
        if a.calibration:
            click.echo(f"  {_calibration_line(a.calibration)}")
            for w in a.calibration.warnings:
                click.echo(f"  warning: {w}")
    for name in result.label_sets:
        click.echo(f"labels/{name}")
    click.echo(f"bundle: {result.bundle}")
    if was_signed and not (Path(out) / SIGNATURE).exists():
        click.echo(STALE_SIGNATURE, err=True)
