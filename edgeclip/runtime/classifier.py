"""ZeroShotClassifier: a bundle + one backend -> ranked labels for images, without torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeclip.bundle import Artifact, Bundle
from edgeclip.errors import BundleError, EdgeclipError, ImageError, MissingDependencyError
from edgeclip.runtime.backends import AUTO_ORDER, BACKENDS, backend_class
from edgeclip.runtime.backends.base import Backend, BackendOptions
from edgeclip.runtime.preprocess import ImageInput, preprocess


@dataclass
class Classification:
    """One image's result: ranked (label, probability) pairs, or the error that image raised."""

    source: str
    predictions: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.predictions[0][0] if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.source, "error": self.error}
        return {"image": self.source, "predictions": [{"label": k, "probability": p} for k, p in self.predictions]}


class ZeroShotClassifier:
    def __init__(
        self, bundle: Bundle, image_backend: Backend, image_artifact: Artifact, labels: str, max_batch: int
    ) -> None:
        self.bundle = bundle
        self.backend = image_backend
        self.artifact = image_artifact
        self.max_batch = max_batch
        self.preprocess_cfg = bundle.manifest.preprocess
        self.logit_scale = float(bundle.manifest.logit_scale)
        emb, meta = bundle.label_set(labels)
        self.label_embeddings: np.ndarray = emb
        self.classes: list[str] = list(meta["classes"])

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str] | Bundle,
        backend: str = "auto",
        precision: str | None = None,
        labels: str = "default",
        threads: int | None = None,
        max_batch: int = 32,
    ) -> ZeroShotClassifier:
        b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        name, artifact = choose_artifact(b, "image", backend, precision)
        path = b.artifact_path(artifact)  # verifies the sha256 before anything runs it
        impl = backend_class(name)(path, artifact, BackendOptions(threads=threads))
        return cls(b, impl, artifact, labels, max_batch)

    @property
    def backend_name(self) -> str:
        return type(self.backend).name

    def embed_images(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[str | None]]:
        """-> ([N, D] L2-normalised embeddings, per-image error or None). Failed rows are NaN."""
        pixels: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for src in images:
            try:
                pixels.append(preprocess(src, self.preprocess_cfg))
                errors.append(None)
            except ImageError as e:  # one bad image never takes the batch down
                pixels.append(None)
                errors.append(str(e))
        out = np.full((len(images), self.bundle.manifest.embed_dim), np.nan, dtype=np.float32)
        good = [i for i, p in enumerate(pixels) if p is not None]
        in_name, out_name = self.artifact.inputs[0].name, self.artifact.outputs[0].name
        for start in range(0, len(good), self.max_batch):
            rows = good[start : start + self.max_batch]
            batch = np.stack([pixels[i] for i in rows])  # type: ignore[misc]
            out[rows] = self.backend.infer({in_name: batch})[out_name]
        return out, errors

    def classify(self, images: Sequence[ImageInput] | ImageInput, top_k: int = 5) -> list[Classification]:
        """Rank the label set for each image; probabilities are softmax(logit_scale * cosine)."""
        single = isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or not isinstance(images, Sequence)
        batch: list[ImageInput] = [images] if single else list(images)  # type: ignore[list-item,arg-type]
        if not batch:
            raise EdgeclipError("no images given", fix="pass at least one image")
        emb, errors = self.embed_images(batch)
        k = max(1, min(top_k, len(self.classes)))
        results = []
        for src, e, err in zip(batch, emb, errors, strict=True):
            name = str(src) if isinstance(src, (str, os.PathLike)) else type(src).__name__
            if err is not None:
                results.append(Classification(name, error=err))
                continue
            logits = self.logit_scale * (self.label_embeddings @ e)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = np.argsort(-p, kind="stable")[:k]
            results.append(Classification(name, [(self.classes[i], float(p[i])) for i in top]))
        return results


def choose_artifact(bundle: Bundle, encoder: str, backend: str, precision: str | None) -> tuple[str, Artifact]:
    """Pick (backend name, artifact): an explicit backend must be installed and present."""
    m = bundle.manifest
    names = list(AUTO_ORDER) if backend == "auto" else [backend]
    if backend != "auto" and backend not in BACKENDS:
        backend_class(backend)  # raises UnknownNameError with a suggestion
    missing: list[str] = []
    for name in names:
        cls = backend_class(name)
        candidates = m.find(encoder, cls.target, precision)
        if not candidates:
            continue
        if not cls.available():
            missing.append(f'pip install "edgeclip[{cls.extra}]"')
            continue
        order = {"fp32": 0, "fp16": 1}  # without a precision asked for, prefer exactness
        return name, sorted(candidates, key=lambda a: order.get(a.precision, 2))[0]
    have = sorted({f"{a.target}-{a.precision}" for a in m.artifacts if a.encoder == encoder})
    if missing:
        raise MissingDependencyError(
            f"the bundle has a {encoder} encoder for backend '{names[0]}' but its SDK is not installed",
            fix=missing[0],
        )
    want = f"backend '{backend}'" + (f" at precision '{precision}'" if precision else "")
    raise BundleError(
        f"{bundle.root} has no {encoder} encoder for {want} (it has: {', '.join(have) or 'none'})",
        fix="export the missing target with `edgeclip export --target ...`, or choose another backend",
    )
