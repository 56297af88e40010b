"""Device-side commands: `edgeclip classify` and `edgeclip inspect` (no torch imported)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--backend", default="auto", show_default=True)
@click.option("--precision", default=None)
@click.option("--labels", default="default", show_default=True, help="Label set name in the bundle.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
def classify(
    bundle: str, images: tuple[str, ...], top_k: int, backend: str, precision: str | None, labels: str, as_json: bool
) -> None:
    """Zero-shot classify IMAGES with a bundle. Exit code 1 if any image failed."""
    from edgeclip.runtime import ZeroShotClassifier

    clf = ZeroShotClassifier.load(bundle, backend=backend, precision=precision, labels=labels)
    results = clf.classify(list(images), top_k=top_k)
    for r in results:
        if as_json:
            click.echo(json.dumps(r.to_dict()))
        elif r.ok:
            preds = ", ".join(f"{label} {p:.3f}" for label, p in r.predictions)
            click.echo(f"{r.source}: {preds}")
        else:
            click.echo(f"{r.source}: Error: {r.error}", err=True)
    failed = sum(not r.ok for r in results)
    if failed:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check every file's sha256.")
@click.option("--json", "as_json", is_flag=True)
def inspect(bundle: str, verify: bool, as_json: bool) -> None:
    """Show a bundle's model, artifacts with their validation numbers, and label sets."""
    from edgeclip.bundle import Bundle

    b = Bundle.open(bundle)
    if verify:
        b.verify()
    m = b.manifest
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    click.echo(f"bundle {b.root}  (schema {m.schema_version}, edgeclip {m.edgeclip_version})")
    click.echo(f"model {m.model_name}  embed_dim {m.embed_dim}  image {m.preprocess.image_size}px  "
               f"context {m.tokenizer.context_length}")
    for a in m.artifacts:
        size = sum(b.resolve(f).stat().st_size for f in a.files)
        v = a.validation
        cos = f"cos_min {v['cosine_min']:.7f} max_abs {v['max_abs']:.2e}" if "cosine_min" in v else "not validated"
        click.echo(f"  {a.key:<24} {size / 1e6:8.2f} MB  {cos}  ({v.get('checked_with', '?')})")
    for name, ls in m.labels.items():
        click.echo(f"  labels/{name}: {ls.num_classes} classes")
    if verify:
        click.echo("all files verified (sha256)")


