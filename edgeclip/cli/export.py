"""`edgeclip export`."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.errors import ConfigError


def _read_lines(path: str | None, what: str) -> list[str] | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--target", "targets", default="onnx", show_default=True, help="Comma-separated targets.")
@click.option("--precision", default="fp32", show_default=True)
@click.option("--encoders", default="image,text", show_default=True, help="image, text or image,text.")
@click.option("--labels", "labels_file", type=click.Path(), help="Class names, one per line.")
@click.option("--templates", "templates_file", type=click.Path(), help="Prompt templates with '{}', one per line.")
@click.option("--label-name", default="default", show_default=True, help="Name of the label set in the bundle.")
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to create or add to.")
def export(
    checkpoint: str, targets: str, precision: str, encoders: str, labels_file: str | None,
    templates_file: str | None, label_name: str, out: str,
) -> None:
    """Export the split image/text encoders of CHECKPOINT into a bundle, validated against torch."""
    from edgeclip.export.api import export_bundle

    classes = _read_lines(labels_file, "labels")
    if classes is not None and not classes:
        raise ConfigError(f"labels file {labels_file} has no class names", fix="one class name per line")
    templates = _read_lines(templates_file, "templates")
    result = export_bundle(
        checkpoint, out,
        targets=[t.strip() for t in targets.split(",") if t.strip()],
        precision=precision,
        encoders=[e.strip() for e in encoders.split(",") if e.strip()],
        labels={label_name: (classes, templates)} if classes is not None else None,
    )
    for a in result.artifacts:
        v = a.validation
        click.echo(f"{a.key:<24} cosine_min {v['cosine_min']:.7f}  max_abs {v['max_abs']:.2e}  -> {out}/{a.path}")
    for name in result.label_sets:
        click.echo(f"labels/{name}")
    click.echo(f"bundle: {result.bundle}")
