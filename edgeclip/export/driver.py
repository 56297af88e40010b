"""The export driver. `export_bundle`: checkpoint -> validated split encoders + label embeddings -> bundle.

Targets only build files (`Target.build -> Built`); the driver owns each artifact's life after that:
it hashes the files, loads them through the runtime's `Encoder` in the backend the capability table
names (the code a device runs), validates them against the torch fp32 reference and assembles the
manifest entry.

Everything is built in a staging directory next to the output and moved into place only
after every artifact passed validation, so a failed export leaves nothing half-written. Adding to an
existing bundle stages a full copy (hard links) and swaps it in; only artifacts of the same weights
(`Manifest.source_weights_sha256`) may be added, anything else needs `overwrite`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip._io import sha256_file
from edgeclip.bundle import MANIFEST, Artifact, Bundle, Manifest, Validation
from edgeclip.data.builtin import REFERENCE_SEED, shapes_heldout
from edgeclip.errors import BundleError, ConfigError, ExportError, ValidationError
from edgeclip.export.capabilities import capability, plan_exports
from edgeclip.export.embedding_space import embedding_space
from edgeclip.export.encoders import ENCODERS, EncoderSpec, encoder_module, encoder_spec, export_config
from edgeclip.export.int8.common import Int8Options, check_int8_plan, encoder_data, preload_calibration
from edgeclip.export.targets import Built, ExportContext, Run, artifact_entry, get_target, load_built
from edgeclip.export.validate import GUARDED, fed_as, validate
from edgeclip.model.build import Model, encoder_of, scoring_of
from edgeclip.model.checkpoint import CheckpointInfo, load_checkpoint
from edgeclip.runtime.backends import backend_class
from edgeclip.runtime.classifier import Encoder
from edgeclip.runtime.labels import DEFAULT_TEMPLATES, check_classes, label_embeddings, prompts
from edgeclip.runtime.preprocess import DEFAULT_DECODE, preprocess
from edgeclip.runtime.tokenizer import TextTokenizer

PROBE_TEXTS = (
    "a photo of a dog.",
    "a red circle on a grey background",
    "an image of something blue",
    "two cats sleeping on a sofa next to the window on a sunny afternoon, seen from above",
)


@dataclass
class ExportResult:
    bundle: Path
    artifacts: list[Artifact] = field(default_factory=list)
    label_sets: list[str] = field(default_factory=list)


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    targets: Sequence[str] = ("onnx",),
    precision: str | Sequence[str] | None = None,
    encoders: Sequence[str] = ENCODERS,
    labels: Mapping[str, tuple[Sequence[str], Sequence[str] | None]] | None = None,
    options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export `encoders` for each target into the bundle at `out` (created, extended, or with
    `overwrite` replaced).

    `labels` maps a label-set name to (class names, prompt templates or None for defaults).
    An existing bundle is extended only with artifacts of the same weights and configuration.
    """
    out, options = Path(out), dict(options or {})
    # check every argument before any work, so bad input fails fast and writes nothing
    plan = _plan(targets, precision, encoders, options)
    label_sets = {name: (check_classes(classes), list(templates or DEFAULT_TEMPLATES))
                  for name, (classes, templates) in (labels or {}).items()}
    existing = _existing_bundle(out, overwrite)
    model, info = load_checkpoint(checkpoint)
    manifest = _new_manifest(model, info)
    if existing is not None:
        _check_same_source(existing.manifest, manifest, out)
        manifest = existing.manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    # the whole new bundle is built here and swapped in at the end: the old one is never half-changed
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the bundle is an ordinary directory
    workdir = Path(tempfile.mkdtemp(prefix="edgeclip-export-"))
    try:
        ctx = _context(model, info, staging, workdir, options, next(iter(label_sets.values()), None),
                       manifest.preprocess.decode)
        preload_calibration(ctx, plan)
        artifacts = [export_artifact(ctx, t, e, p) for t, p in plan for e in encoders]
        _stage(Bundle(staging, manifest), ctx, artifacts, label_sets, old=out if existing else None)
        _swap_in(staging, out)
        return ExportResult(out, artifacts, list(label_sets))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _plan(targets: Sequence[str], precision: str | Sequence[str] | None, encoders: Sequence[str],
          options: dict[str, Any]) -> list[tuple[str, str]]:
    """(target, precision) pairs to export, after refusing anything unsupported."""
    asked = [precision] if isinstance(precision, str) else list(precision) if precision else None
    plan = plan_exports(list(targets), asked, options)
    check_int8_plan(plan, options)
    for name, _ in plan:
        get_target(name)  # every builder imports before any work
    for e in encoders:
        if e not in ENCODERS:
            raise ConfigError(f"unknown encoder '{e}'", fix="use image, text or image,text")
    return plan


def _context(model: Model, info: CheckpointInfo, staging: Path, workdir: Path, options: dict[str, Any],
             labels: tuple[list[str], list[str]] | None, decode: str) -> ExportContext:
    """The context every builder gets; the first label set measures top-1 and calibrates INT8 text.
    Probe images are decoded the way (`decode`) the manifest records and the runtime will use."""
    classes = labels[0] if labels else None
    return ExportContext(
        model, info, staging, _probes(info, classes, decode), workdir, options,
        label_embeddings=_label_embeddings(model, info, *labels) if labels else None,
        label_classes=classes, label_prompts=prompts(*labels) if labels else [],
    )


def _stage(bundle: Bundle, ctx: ExportContext, artifacts: list[Artifact],
           label_sets: dict[str, tuple[list[str], list[str]]], old: Path | None) -> None:
    """Register the artifacts and label sets in the staged bundle, carry over what an `old` bundle
    keeps (or copy the tokenizer into a new one), save the manifest and verify the whole of it."""
    for a in artifacts:
        bundle.add_artifact(a)
    for name, (classes, templates) in label_sets.items():
        emb = _label_embeddings(ctx.model, ctx.info, classes, templates)
        bundle.write_label_set(name, emb, {**_label_meta(ctx.model, classes, templates),
                                           "embedding_space": embedding_space(ctx.model, ctx.info, "text")})
    if old is None:
        shutil.copyfile(ctx.info.tokenizer_path, bundle.root / ctx.info.tokenizer.file)
    else:
        _link_unchanged(old, bundle.root, replaced=[a.path for a in artifacts])
    bundle.save_manifest()
    Bundle.open(bundle.root).verify()  # what is swapped in opens and every file matches its hash


# ---- one artifact's life: build, hash, load through the runtime, validate, register --------------
def export_artifact(ctx: ExportContext, target: str, encoder: str, precision: str) -> Artifact:
    """Build one artifact with `target`'s builder and return its validated manifest entry; raises
    ValidationError (and registers nothing) when it disagrees with the torch reference."""
    spec = encoder_spec(encoder, ctx.info)
    rel_dir = f"{encoder}/{target}-{precision}"
    folder = ctx.bundle_root / rel_dir
    folder.mkdir(parents=True, exist_ok=True)
    built = get_target(target).build(ctx, spec, precision, folder)
    iface = built.interface or spec

    def entry() -> Artifact:
        return artifact_entry(iface, target, precision, ctx.bundle_root, rel_dir, built.files, built.environment)

    artifact = entry()
    backend = backend_class(capability(target).backend)
    if backend.available():
        loaded = _load(ctx, artifact, built)
        if built.loaded is not None:  # loading may add files (TensorRT: the engine built on this GPU)
            built.loaded(built, loaded.backend)
            artifact = entry()
        artifact.validation = _validate(ctx, spec, artifact, loaded, built.checked_with)
    elif built.fallback is not None and built.fallback.runner is not None:
        with built.fallback.runner(ctx.bundle_root / artifact.main_file, artifact) as run:
            artifact.validation = _validate(ctx, spec, artifact, run, built.fallback.checked_with)
    elif built.fallback is not None:  # nothing here can run it: only the builder's own checks
        artifact.validation = Validation(passed=None, checked_with=built.fallback.checked_with)
    else:
        raise backend.unavailable() or ExportError(f"the {target} backend cannot run here")
    artifact.validation.details.update(built.records)
    artifact.calibration = built.calibration
    artifact.embedding_space = embedding_space(ctx.model, ctx.info, encoder)
    return artifact


def _load(ctx: ExportContext, artifact: Artifact, built: Built) -> Encoder:
    """The staged artifact through the runtime's Encoder; a file its backend cannot load is refused."""
    try:
        return load_built(ctx.bundle_root, artifact, built.options)
    except BundleError as e:
        raise ValidationError(f"{e.message}; the artifact was not registered",
                              fix="export another --target, or upgrade its SDK") from e


def _validate(ctx: ExportContext, spec: EncoderSpec, artifact: Artifact, run: Run, checked_with: str) -> Validation:
    """Validation against torch fp32 on the probes; activation-quantized INT8 on the guard's
    held-out data and budget."""
    gate = None
    if artifact.precision in GUARDED:
        budget = Int8Options.from_options(ctx.options).budget
        gate = encoder_data(ctx, spec, dynamic=artifact.precision == "int8-dynamic").heldout, budget
    result = validate(
        encoder_module(spec.name, ctx.model), ctx.probes[spec.name],
        fed_as(run, artifact.inputs[0], ctx.info.preprocess), artifact.precision,
        what=f"{artifact.key} ({checked_with})",
        label_embeddings=ctx.label_embeddings if spec.name == "image" else None, heldout=gate,
    )
    return Validation.from_dict({**result, "checked_with": checked_with}, f"{artifact.key} validation")


REPLACE_FIX = "pass --overwrite (Python: overwrite=True) to replace the bundle, or choose a new --out path"


def _existing_bundle(out: Path, overwrite: bool) -> Bundle | None:
    """The bundle to add to, or None when `out` is new, empty, or a bundle to be replaced."""
    if not out.exists():
        return None
    if (out / MANIFEST).is_file():
        if overwrite:
            return None
        try:
            return Bundle.open(out)
        except BundleError as e:
            raise ExportError(f"{out} holds a bundle that cannot be read, so nothing can be added to it: {e.message}",
                              fix=REPLACE_FIX) from e
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory is as good as none
        return None
    raise ExportError(
        f"output path {out} exists and is not an edgeclip bundle",
        fix="choose a new --out path (or an existing bundle to add artifacts to)",
    )


def _check_same_source(old: Manifest, new: Manifest, out: Path) -> None:
    """One bundle holds one model: refuse artifacts of other weights or another configuration."""
    if old.source_weights_sha256 is None:
        reason = "it does not record which weights it was exported from (written by an older edgeclip)"
    elif old.source_weights_sha256 != new.source_weights_sha256:
        reason = (f"it holds other weights ({old.model_name}, sha256 {old.source_weights_sha256[:12]}...; this "
                  f"checkpoint: {new.model_name}, sha256 {(new.source_weights_sha256 or '')[:12]}...)")
    else:
        differs = [name for name, a, b in (
            ("model config", _plain(old.model_config), _plain(new.model_config)),
            # the decode path is the bundle's runtime default, not a property of the model
            ("preprocessing", dataclasses.replace(old.preprocess, decode=new.preprocess.decode), new.preprocess),
            ("tokenizer", (old.tokenizer, old.tokenizer_sha256), (new.tokenizer, new.tokenizer_sha256)),
        ) if a != b]
        if not differs:
            return
        reason = f"its {' and '.join(differs)} differ from this checkpoint's (same weights)"
    raise ExportError(f"cannot add artifacts to {out}: {reason}; mixing models would make a wrong bundle",
                      fix=REPLACE_FIX)


def _plain(obj: Any) -> Any:
    """The JSON form, so tuples and lists compare equal."""
    return json.loads(json.dumps(obj))


def _link_unchanged(old: Path, staging: Path, replaced: list[str]) -> None:
    """Carry the old bundle's files into staging: hard links (files are only ever replaced by
    rename, never written in place), or copies where links are not possible. The manifest, replaced
    artifact folders and files staging already has (rewritten label sets) are left out."""
    for src in sorted(old.rglob("*")):
        rel = src.relative_to(old).as_posix()
        dst = staging / rel
        if src.is_symlink() or not src.is_file() or rel == MANIFEST or dst.exists():
            continue
        if any(rel.startswith(r + "/") for r in replaced):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _swap_in(staging: Path, out: Path) -> None:
    """Put the staged bundle at `out`. An old bundle is exchanged with it in one step where the
    system can (Linux renameat2); elsewhere it is moved aside first, removed only once the new one
    is in place, and moved back if that fails."""
    if not out.exists():
        staging.rename(out)
        return
    if _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the old bundle
        return
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    aside = holder / "bundle"
    out.rename(aside)
    try:
        staging.rename(out)
    except BaseException:
        aside.rename(out)
        holder.rmdir()
        raise
    shutil.rmtree(holder, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (renameat2 RENAME_EXCHANGE); False where unsupported."""
    if sys.platform != "linux":
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0)


def _new_manifest(model: Model, info: CheckpointInfo) -> Manifest:
    return Manifest(
        model_name=info.model.name,
        # the config of what the artifacts hold: FastViT towers are exported reparameterized
        model_config={**export_config(info.model).to_dict(), "scoring": scoring_of(model).to_dict()},
        embed_dim=info.model.embed_dim,
        logit_scale=scoring_of(model).logit_scale,
        preprocess=dataclasses.replace(info.preprocess, decode=DEFAULT_DECODE),
        tokenizer=info.tokenizer,
        tokenizer_sha256=sha256_file(info.tokenizer_path),
        source_weights_sha256=weights_hash(model),
    )


def _probes(info: CheckpointInfo, classes: list[str] | None, decode: str) -> dict[str, torch.Tensor]:
    """Fixed validation inputs: held-out built-in images at an odd size (the resize and crop run)
    plus noise; prompts and sentences."""
    shapes = shapes_heldout(info.preprocess.image_size + 13, REFERENCE_SEED, size=6)
    pre = info.preprocess
    images = [preprocess(shapes[i].image, pre, decode) for i in range(len(shapes))]
    rng = np.random.default_rng(0)
    images += [preprocess(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), pre, decode) for _ in range(2)]
    texts = list(PROBE_TEXTS) + [f"a photo of a {c}." for c in (classes or [])[:4]]
    ids = TextTokenizer(info.tokenizer_path, info.tokenizer)(texts)
    return {"image": torch.from_numpy(np.stack(images)), "text": torch.from_numpy(ids)}


def weights_hash(model: Model) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) of the loaded model: which weights a
    bundle was exported from, however the checkpoint file was written."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def text_tower_hash(model: Model) -> str:
    """sha256 over the text tower's tensors: label embeddings are only valid for this tower."""
    enc = encoder_of("text", model)
    h = hashlib.sha256()
    for name, t in sorted(enc.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _label_embeddings(model: Model, info: CheckpointInfo, classes: list[str], templates: Sequence[str]) -> np.ndarray:
    enc = encoder_of("text", model).eval()
    tokenize = TextTokenizer(info.tokenizer_path, info.tokenizer)
    return label_embeddings(classes, templates, lambda t: enc(torch.from_numpy(tokenize(t))).numpy())


def _label_meta(model: Model, classes: list[str], templates: Sequence[str]) -> dict[str, object]:
    return {"classes": classes, "templates": list(templates), "text_tower_sha256": text_tower_hash(model)}
