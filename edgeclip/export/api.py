"""`export_bundle`: checkpoint -> validated split encoders + label embeddings -> bundle.

Everything is built in a staging directory next to the output and moved into place only
after every artifact passed validation, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip._io import sha256_file
from edgeclip.bundle import MANIFEST, Artifact, Bundle, Manifest
from edgeclip.errors import ConfigError, ExportError
from edgeclip.export.capabilities import plan_exports
from edgeclip.export.encoders import ENCODERS, encoder_spec
from edgeclip.export.int8 import check_int8_plan, preload_calibration
from edgeclip.export.targets import ExportContext, Target, get_target
from edgeclip.model.checkpoint import CheckpointInfo, load_checkpoint
from edgeclip.model.clip import CLIP, TextEncoder
from edgeclip.runtime.labels import DEFAULT_TEMPLATES, check_classes, label_embeddings, prompts
from edgeclip.runtime.preprocess import preprocess
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
) -> ExportResult:
    """Export `encoders` for each target into the bundle at `out` (created or extended).

    `labels` maps a label-set name to (class names, prompt templates or None for defaults).
    """
    out = Path(out)
    # check every argument before any work, so bad input fails fast and writes nothing
    asked = [precision] if isinstance(precision, str) else list(precision) if precision else None
    plan = plan_exports(list(targets), asked, dict(options or {}))
    check_int8_plan(plan, dict(options or {}))
    resolved = {name: get_target(name) for name, _ in plan}
    for e in encoders:
        if e not in ENCODERS:
            raise ConfigError(f"unknown encoder '{e}'", fix="use image, text or image,text")
    label_sets = {
        name: (check_classes(classes), list(templates or DEFAULT_TEMPLATES))
        for name, (classes, templates) in (labels or {}).items()
    }
    existing = _existing_bundle(out)
    model, info = load_checkpoint(checkpoint)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the bundle is an ordinary directory
    workdir = Path(tempfile.mkdtemp(prefix="edgeclip-export-"))
    try:
        first = next(iter(label_sets.values())) if label_sets else None
        ctx = ExportContext(
            model, info, staging, _probes(info, first[0] if first else None), workdir, dict(options or {}),
            label_embeddings=_label_embeddings(model, info, *first) if first else None,
            label_classes=first[0] if first else None,
            label_prompts=prompts(*first) if first else [],
        )
        preload_calibration(ctx, plan)
        artifacts = [_export_one(resolved[t], ctx, e, p) for t, p in plan for e in encoders]
        if existing is None:
            bundle = Bundle(staging, _new_manifest(model, info))
            shutil.copyfile(info.tokenizer_path, staging / info.tokenizer.file)
        else:
            bundle = existing
        result = ExportResult(bundle=out)
        for a in artifacts:
            bundle.add_artifact(a)
            result.artifacts.append(a)
        staged = Bundle(staging, bundle.manifest)  # label files are written to staging first
        for name, (classes, templates) in label_sets.items():
            emb = _label_embeddings(model, info, classes, templates)
            staged.write_label_set(name, emb, _label_meta(model, classes, templates))
            result.label_sets.append(name)
        if existing is None:
            bundle.save_manifest()
            staging.rename(out)
        else:
            _merge_into(staging, out, [a.path for a in artifacts] + (["labels"] if label_sets else []))
            bundle.save_manifest()
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _export_one(target: Target, ctx: ExportContext, encoder: str, precision: str) -> Artifact:
    return target.export(ctx, encoder_spec(encoder, ctx.info), precision)


def _existing_bundle(out: Path) -> Bundle | None:
    if not out.exists():
        return None
    if (out / MANIFEST).is_file():
        return Bundle.open(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory is as good as none
        return None
    raise ExportError(
        f"output path {out} exists and is not an edgeclip bundle",
        fix="choose a new --out path (or an existing bundle to add artifacts to)",
    )


def _merge_into(staging: Path, out: Path, rel_dirs: list[str]) -> None:
    """Move freshly written artifact folders into an existing bundle, replacing old ones."""
    for rel in rel_dirs:
        src, dst = staging / rel, out / rel
        if rel == "labels":
            dst.mkdir(exist_ok=True)
            for f in src.iterdir():
                f.replace(dst / f.name)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst)
        src.rename(dst)


def _new_manifest(model: CLIP, info: CheckpointInfo) -> Manifest:
    return Manifest(
        model_name=info.model.name,
        model_config=info.model.to_dict(),
        embed_dim=info.model.embed_dim,
        logit_scale=float(model.logit_scale.detach().exp()),
        preprocess=info.preprocess,
        tokenizer=info.tokenizer,
        tokenizer_sha256=sha256_file(info.tokenizer_path),
    )


def _probes(info: CheckpointInfo, classes: list[str] | None) -> dict[str, torch.Tensor]:
    """Fixed validation inputs: built-in images of odd sizes plus noise; prompts and sentences."""
    from edgeclip.train.shapes import ShapesDataset

    shapes = ShapesDataset("heldout", size=6, image_size=info.preprocess.image_size + 13, seed=123)
    images = [preprocess(shapes[i].image, info.preprocess) for i in range(len(shapes))]
    rng = np.random.default_rng(0)
    images += [preprocess(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), info.preprocess) for _ in range(2)]
    texts = list(PROBE_TEXTS) + [f"a photo of a {c}." for c in (classes or [])[:4]]
    ids = TextTokenizer(info.tokenizer_path, info.tokenizer)(texts)
    return {"image": torch.from_numpy(np.stack(images)), "text": torch.from_numpy(ids)}


def text_tower_hash(model: CLIP) -> str:
    """sha256 over the text tower's tensors: label embeddings are only valid for this tower."""
    enc = TextEncoder(model)
    h = hashlib.sha256()
    for name, t in sorted(enc.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _label_embeddings(model: CLIP, info: CheckpointInfo, classes: list[str], templates: Sequence[str]) -> np.ndarray:
    enc = TextEncoder(model).eval()
    tokenize = TextTokenizer(info.tokenizer_path, info.tokenizer)
    return label_embeddings(classes, templates, lambda t: enc(torch.from_numpy(tokenize(t))).numpy())


def _label_meta(model: CLIP, classes: list[str], templates: Sequence[str]) -> dict[str, object]:
    return {"classes": classes, "templates": list(templates), "text_tower_sha256": text_tower_hash(model)}
