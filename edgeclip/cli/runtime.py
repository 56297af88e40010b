"""Device-side commands: classify, embed, labels, inspect (no torch imported)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import click

from edgeclip.bundle import SIGNATURE
from edgeclip.cli._common import STALE_SIGNATURE, TRUSTED_KEY, read_lines
from edgeclip.errors import ImageError

EXACT_PREPROCESS = click.option(
    "--exact-preprocess", is_flag=True, default=None,
    help="Decode and resize exactly as in training (bit for bit); default: the path the bundle was validated "
         "with (`decode` in its manifest; 'fast' decodes large JPEGs at reduced size).")
PRECISION_HELP = ("Artifact precision. Default: the backend's preference (int8 first), unless another precision "
                  "ran more than 5% faster on this host with these settings (measured by `edgeclip bench` or an "
                  "earlier --precision fastest); 'fastest' times each precision now and records it.")
BATCH_SIZE = click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
                          help="Images per inference call; the next batch is decoded while one runs.")


def expand_images(inputs: tuple[str, ...]) -> list[str]:
    """Image paths, with a folder standing for the image files under it (sorted, hidden ones left out)."""
    from edgeclip.data.images import list_images

    out: list[str] = []
    for item in inputs:
        if Path(item).is_dir():
            out.extend(str(p) for p in list_images(Path(item)))
        else:
            out.append(item)
    return out


class _ProgressBar:
    """A progress bar on stderr for runs longer than one batch, when stderr is a terminal."""

    def __init__(self, total: int, batch: int) -> None:
        self.bar = None
        if total > batch and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("classify", total=total)

    def __enter__(self) -> _ProgressBar:
        if self.bar is not None:
            self.bar.start()
        return self

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@click.command()
@click.argument("bundle", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@BATCH_SIZE
@EXACT_PREPROCESS
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--backend", default="auto", show_default=True, help="auto, onnxruntime, openvino, tensorrt, coreml.")
@click.option("--precision", default=None, help=PRECISION_HELP)
@click.option("--labels", default="default", show_default=True, help="Label set name in the bundle.")
@click.option("--threads", default=None, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@click.option("--multi-label", is_flag=True,
              help="Every label whose probability reaches --threshold (SigLIP bundles: independent sigmoids).")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="With --multi-label: the probability a label needs.")
@TRUSTED_KEY
def classify(
    bundle: str, images: tuple[str, ...], batch_size: int, exact_preprocess: bool | None, top_k: int, backend: str,
    precision: str | None, labels: str, threads: int | None, as_json: bool, multi_label: bool, threshold: float,
    trusted_key: tuple[str, ...],
) -> None:
    """Zero-shot classify IMAGES (files, or folders of images) with a bundle. Exit code 1 if any image failed."""
    from edgeclip.runtime import ZeroShotClassifier

    paths = expand_images(images)
    if not paths:
        raise click.UsageError(f"no image files in {', '.join(images)}")
    clf = ZeroShotClassifier.load(bundle, backend=backend, precision=precision, labels=labels, threads=threads,
                                  trusted_keys=list(trusted_key) or None, max_batch=batch_size,
                                  exact_preprocess=exact_preprocess)
    if not as_json:
        click.echo(f"# {clf.image.artifact.key} on {clf.backend_name} ({clf.image.reason}); "
                   f"{clf.decode} preprocessing", err=True)
    with _ProgressBar(len(paths), batch_size) as bar:
        results = clf.classify(paths, top_k=top_k, threshold=threshold if multi_label else None, progress=bar)
    for r in results:
        if as_json:
            click.echo(json.dumps({**r.to_dict(), "embedding_space": clf.image.artifact.embedding_space}))
        elif r.ok:
            preds = ", ".join(f"{label} {p:.3f}" for label, p in r.predictions)
            click.echo(f"{r.source}: {preds}")
        else:
            click.echo(f"{r.source}: Error: {r.error}", err=True)
    failed = sum(not r.ok for r in results)
    if failed:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check every file's sha256.")
@click.option("--json", "as_json", is_flag=True)
@TRUSTED_KEY
def inspect(bundles: tuple[str, ...], verify: bool, as_json: bool, trusted_key: tuple[str, ...]) -> None:
    """Show a bundle's model, artifacts with their validation numbers, label sets and signature.

    With two bundles, OLD NEW: say whether embeddings computed with OLD stay valid with NEW."""
    from edgeclip.bundle import Bundle
    from edgeclip.runtime.signing import verify_signature

    if len(bundles) > 2:
        raise click.UsageError("give one bundle, or two to compare (OLD NEW)")
    opened = [Bundle.open(path) for path in bundles]
    for b in opened:
        verify_signature(b, list(trusted_key) or None)
        if verify:
            b.verify()
    if len(opened) == 2:
        _compare_spaces(opened[0], opened[1], as_json)
    elif as_json:
        click.echo(json.dumps(opened[0].manifest.to_dict(), indent=2))
    else:
        _describe(opened[0], verify, list(trusted_key) or None)


def _describe(b: Any, verified: bool, trusted_keys: list[str] | None) -> None:
    from edgeclip.export.capabilities import CAPABILITIES

    m = b.manifest
    click.echo(f"bundle {b.root}  (schema {m.schema_version}, edgeclip {m.edgeclip_version})")
    click.echo(f"model {m.model_name}  embed_dim {m.embed_dim}  image {m.preprocess.image_size}px  "
               f"context {m.tokenizer.context_length}")
    for a in m.artifacts:
        size = sum(b.resolve(f).stat().st_size for f in a.files)
        v = a.validation
        cos = ("spec checked" if v.cosine_min is None or v.max_abs is None
               else f"cos_min {v.cosine_min:.7f} max_abs {v.max_abs:.2e}")
        if v.heldout is not None:  # INT8: gated on held-out inputs; the probe figures are informational
            cos = f"held-out cos_min {v.heldout.cosine_min:.5f} (probes, informational: {cos})"
        runs = CAPABILITIES[a.target].runs_on if a.target in CAPABILITIES else "?"
        click.echo(f"  {a.key:<26} {size / 1e6:8.2f} MB  {cos}  [{v.checked_with or '?'}]")
        click.echo(f"  {'':<26} runs on: {runs}; embedding space {a.embedding_space or 'not recorded'}")
    for name, ls in m.labels.items():
        click.echo(f"  labels/{name}: {ls.num_classes} classes")
    if verified:
        click.echo("all files verified (sha256)")
    click.echo(_signature_line(b, trusted_keys))


def _signature_line(b: Any, trusted_keys: list[str] | None) -> str:
    from edgeclip.runtime.signing import ENV, read_signature, trust_policy

    if not (b.root / SIGNATURE).is_file():
        return "signature: none (unsigned)"
    if trust_policy(trusted_keys) is not None:  # verified by the caller, or it had raised
        return "signature: verified, signed by a trusted key"
    sig = read_signature(b)
    return f"signature: key {sig['key_id'] if sig else '?'}, not checked (pass --trusted-key or set {ENV})"


def _compare_spaces(old: Any, new: Any, as_json: bool) -> None:
    from edgeclip.runtime.spaces import compare

    verdicts = compare(old.manifest, new.manifest)
    if as_json:
        click.echo(json.dumps({"old": str(old.root), "new": str(new.root),
                               "reindex": any(v.reindex for v in verdicts),
                               "verdicts": [v.to_dict() for v in verdicts]}, indent=2))
        return
    click.echo(f"OLD {old.root}\nNEW {new.root}")
    for v in verdicts:
        click.echo(f"  {v.describe()}")
    if not verdicts:
        click.echo("  no encoder in common: nothing to compare")


@click.command()
@click.argument("bundle", type=click.Path())
@click.argument("inputs", nargs=-1)
@click.option("--images", "images", is_flag=True,
              help="INPUTS are image paths: --images a.jpg b.jpg, or --images a.jpg --images b.jpg.")
@click.option("--text", "text", is_flag=True,
              help='INPUTS are texts: --text "a dog" "a cat", or --text "a dog" --text "a cat".')
@click.option("--backend", default="auto", show_default=True)
@click.option("--precision", default=None, help=PRECISION_HELP)
@click.option("--out", required=True, type=click.Path(),
              help="Output .npy file ([N, D] float32, one row per input that succeeded, in input order).")
@BATCH_SIZE
@EXACT_PREPROCESS
@TRUSTED_KEY
def embed(bundle: str, inputs: tuple[str, ...], images: bool, text: bool, backend: str, precision: str | None,
          out: str, batch_size: int, exact_preprocess: bool | None, trusted_key: tuple[str, ...]) -> None:
    """Write L2-normalised embeddings of images or texts to a .npy file.

    The row order, and the embedding space the vectors live in (compare it after a model update:
    `edgeclip inspect OLD NEW`), are written beside it, to OUT's name + `.sources.json`. An input that fails is
    reported on stderr and gets no row; the exit code is then 1, as for `classify`.
    """
    if images == text:
        raise click.UsageError("give either --images or --text")
    if not inputs:
        raise click.UsageError(f"no {'images' if images else 'texts'} given after --{'images' if images else 'text'}")
    from edgeclip.runtime import ZeroShotClassifier

    clf = ZeroShotClassifier.load(bundle, backend=backend, precision=precision, labels=None,
                                  trusted_keys=list(trusted_key) or None, max_batch=batch_size,
                                  exact_preprocess=exact_preprocess)
    if images:
        emb, errors = clf.embed_images(list(inputs))
    else:
        emb, errors = clf.embed_texts(list(inputs)), [None] * len(inputs)
    for src, err in zip(inputs, errors, strict=True):
        if err:
            click.echo(f"{src}: Error: {err}", err=True)
    rows = [i for i, err in enumerate(errors) if err is None]
    if not rows:
        raise ImageError("no input could be embedded; nothing written", fix="check the errors above")
    space = clf.image.artifact.embedding_space if images else clf.bundle.manifest.embedding_space("text")
    write_embeddings(out, emb[rows], [inputs[i] for i in rows], [(inputs[i], errors[i]) for i in range(len(inputs))
                                                                 if errors[i] is not None], space)
    click.echo(f"{out}: {len(rows)} x {emb.shape[1]} float32 ({len(inputs) - len(rows)} failed); "
               f"embedding space {space or 'not recorded'}")
    if len(rows) < len(inputs):
        raise click.exceptions.Exit(1)


def write_embeddings(out: str, emb: Any, sources: list[str], failed: list[tuple[str, str | None]],
                     space: str | None) -> None:
    """OUT (.npy, no pickle) and OUT.sources.json (the input of each row, and the failed inputs)."""
    import numpy as np

    from edgeclip._io import write_bytes, write_json

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
    write_json(f"{out}.sources.json", {"rows": sources, "failed": [{"input": s, "error": e} for s, e in failed],
                                       "embedding_space": space})
    write_bytes(out, buf.getvalue())


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--classes", "classes_file", required=True, type=click.Path(), help="Class names, one per line.")
@click.option("--templates", "templates_file", type=click.Path(), help="Prompt templates with '{}', one per line.")
@click.option("--name", required=True, help="Name of the label set to write into the bundle.")
@click.option("--backend", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a label set of the same name (e.g. the one made at export).")
def labels(bundle: str, classes_file: str, templates_file: str | None, name: str, backend: str,
           overwrite: bool) -> None:
    """Compute a label set on this device with the bundle's text encoder and save it in the bundle.

    Prompts are encoded in batches (memory stays bounded for 80k prompts), with progress on stderr.
    Ctrl-C stops it and leaves the bundle as it was: nothing is written until every prompt is encoded.
    """
    import sys

    from edgeclip.runtime import ZeroShotClassifier
    from edgeclip.runtime.classifier import check_label_name_free
    from edgeclip.runtime.labels import DEFAULT_TEMPLATES

    classes = read_lines(classes_file, "classes")
    templates = read_lines(templates_file, "templates") if templates_file else list(DEFAULT_TEMPLATES)
    clf = ZeroShotClassifier.load(bundle, backend=backend, labels=None)
    check_label_name_free(clf.bundle, name, overwrite)  # before the text encoder does any work
    click.echo(f"labels/{name}: {len(classes)} classes x {len(templates)} templates = "
               f"{len(classes) * len(templates)} prompts", err=True)
    tty, shown = sys.stderr.isatty(), [-1]

    def progress(done: int, total: int) -> None:
        pct = 100 * done // total
        if tty:
            click.echo(f"\rencoding prompts: {done}/{total} ({pct} %)", nl=done == total, err=True)
        elif pct // 10 > shown[0] or done == total:  # a log file gets a line per 10 %
            shown[0] = pct // 10
            click.echo(f"encoding prompts: {done}/{total} ({pct} %)", err=True)

    try:
        clf.set_labels(classes, templates, name=name, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: nothing was written; {bundle} is unchanged", err=True)
        raise click.exceptions.Exit(130) from None
    signed, before = (clf.bundle.root / SIGNATURE).is_file(), clf.bundle.root
    clf.save_labels(name, overwrite=overwrite)
    if clf.bundle.root != before:  # an install: the set went into a new version, made current
        click.echo(f"labels/{name}: {len(classes)} classes written to a new version of {bundle} "
                   f"({clf.bundle.root.name}), now current; `edgeclip rollback {bundle}` restores the previous one")
    else:
        click.echo(f"labels/{name}: {len(classes)} classes written to {bundle}")
    if signed:
        click.echo(STALE_SIGNATURE, err=True)
