"""ZeroShotClassifier: a bundle + one backend -> ranked labels for images, without torch."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bundle import Artifact, Bundle
from edgeclip.errors import (
    BundleError,
    ConfigError,
    EdgeclipError,
    ImageError,
    MissingDependencyError,
    UnknownNameError,
)
from edgeclip.runtime.backends import BACKENDS, DEFAULT_PRECISION_ORDER, auto_order, backend_class, backend_target
from edgeclip.runtime.backends.base import Backend, BackendOptions
from edgeclip.runtime.install import save_bundle_change
from edgeclip.runtime.labels import DEFAULT_TEMPLATES, Labels, PromptProgress, label_embeddings
from edgeclip.runtime.preprocess import ImageInput, decode_resize, model_input
from edgeclip.runtime.scoring import scoring_from_manifest
from edgeclip.runtime.signing import TrustedKeys, verify_signature
from edgeclip.runtime.timings import FASTEST, NOT_MEASURED, fastest_now, recorded_choice
from edgeclip.runtime.tokenizer import TextTokenizer

log = logging.getLogger("edgeclip.runtime")

# threads decoding the next micro-batch while the model runs the current one (Pillow releases the GIL)
DECODE_THREADS = 2
Progress = Callable[[int], None]  # called with how many images are done so far


@dataclass
class Classification:
    """One image's result: ranked (label, probability) pairs, or the error that image raised."""

    source: str
    predictions: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    scoring: str = "softmax"  # the rule the probabilities follow (runtime/scoring.py)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.predictions[0][0] if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.source, "error": self.error}
        return {"image": self.source, "scoring": self.scoring,
                "predictions": [{"label": k, "probability": p} for k, p in self.predictions]}


@dataclass(frozen=True)
class Encoder:
    """A loaded encoder: which backend runs which artifact, and why it was chosen."""

    backend: Backend
    artifact: Artifact
    reason: str

    @property
    def backend_name(self) -> str:
        return type(self.backend).name

    @classmethod
    def open(cls, path: Path, artifact: Artifact, backend: str, options: BackendOptions, reason: str = "") -> Encoder:
        """Load `artifact`, whose main file is at `path`, in `backend`. The caller vouches for the
        files (a bundle verifies their hashes first; the export driver has just written them)."""
        try:
            impl = backend_class(backend)(path, artifact, options)
        except EdgeclipError:
            raise
        except Exception as e:  # a file that hashes right but is not a model this SDK can load
            raise BundleError(f"{artifact.key} cannot be loaded by {backend}: {type(e).__name__}: {e}",
                              fix="re-export the bundle") from e
        return cls(impl, artifact, reason)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.backend.infer({self.artifact.inputs[0].name: x})[self.artifact.outputs[0].name]
        except EdgeclipError:
            raise
        except Exception as e:  # the SDK's own error types: the artifact does not match its manifest entry
            raise BundleError(f"{self.artifact.key} failed in {self.backend_name}: {type(e).__name__}: {e}",
                              fix="re-export the bundle") from e


class ZeroShotClassifier:
    """Thread-safe: `classify` may be called from many threads at once."""

    def __init__(self, bundle: Bundle, image: Encoder, labels: Labels | None, options: BackendOptions,
                 max_batch: int = 32, exact_preprocess: bool | None = None, text_precision: str | None = None) -> None:
        self.bundle = bundle
        self.image = image
        self.options = options
        self.max_batch = max_batch
        self.preprocess_cfg = bundle.manifest.preprocess
        # the decode path the bundle was validated with, unless the caller asks for one
        self.decode = (self.preprocess_cfg.decode if exact_preprocess is None
                       else "exact" if exact_preprocess else "fast")
        self.logit_scale = float(bundle.manifest.logit_scale)
        self.scoring = scoring_from_manifest(bundle.manifest.model_config, self.logit_scale)
        self._labels = labels  # swapped as a whole by set_labels, never mutated
        self._text: Encoder | None = None
        # the precision asked for at load, for the text tower too where it has it (else its default choice)
        self._text_precision = text_precision
        self._tokenizer: TextTokenizer | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str] | Bundle,
        backend: str = "auto",
        precision: str | None = None,
        labels: str | None = "default",
        threads: int | None = None,
        max_batch: int = 32,
        device: str = "CPU",
        precision_hint: str | None = None,
        trusted_keys: TrustedKeys | None = None,
        exact_preprocess: bool | None = None,
    ) -> ZeroShotClassifier:
        """Open a bundle (or an install folder's current version) and load its image encoder (and a
        label set unless labels=None). Under a trust policy (`trusted_keys`, else the environment's
        EDGECLIP_TRUSTED_KEYS) the bundle must be signed by a trusted key.

        `exact_preprocess`: True decodes and resizes exactly as training did, False takes the fast
        path (reduced-size JPEG decode; see edgeclip.runtime.preprocess), None (default) the path
        the bundle records it was validated with."""
        b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        verify_signature(b, trusted_keys)
        options = BackendOptions(threads=threads, device=device, precision_hint=precision_hint)
        image = load_encoder(b, "image", backend, precision, options)
        label_set = None
        if labels is not None:
            if labels not in b.manifest.labels:
                raise missing_label_set(b, labels)
            emb, meta = b.label_set(labels)
            label_set = Labels(labels, list(meta["classes"]), emb, list(meta.get("templates", [])))
        log.info("image encoder: %s on %s (%s)", image.artifact.key, image.backend_name, image.reason)
        return cls(b, image, label_set, options, max_batch, exact_preprocess,
                   text_precision=precision)

    # ---- properties ----------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return self.image.backend_name

    @property
    def classes(self) -> list[str]:
        return self._require_labels().classes

    @property
    def label_embeddings(self) -> np.ndarray:
        return self._require_labels().embeddings

    def _require_labels(self) -> Labels:
        if self._labels is None:
            raise EdgeclipError("no label set loaded", fix="load with labels=NAME or call set_labels(classes)")
        return self._labels

    # ---- embeddings ----------------------------------------------------------------------
    def embed_images(self, images: Sequence[ImageInput],
                     progress: Progress | None = None) -> tuple[np.ndarray, list[str | None]]:
        """-> ([N, D] L2-normalised embeddings, per-image error or None). Failed rows are NaN.

        Images go through in micro-batches of max_batch, in input order; a small thread pool decodes
        the next micro-batch while the model runs this one. `progress(done)` after each one."""
        out = np.full((len(images), self.bundle.manifest.embed_dim), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * len(images)
        chunks = [range(i, min(i + self.max_batch, len(images))) for i in range(0, len(images), self.max_batch)]
        # one image has nothing to overlap with: decoded inline, its resample split over two threads
        # (unless the classifier was limited to one), the model idle meanwhile
        pool = ThreadPoolExecutor(DECODE_THREADS, "edgeclip-decode") if len(images) > 1 else None
        split = pool is None and self.options.threads != 1

        def decode(chunk: range) -> list[Future[np.ndarray]]:
            args = [(images[i], self.preprocess_cfg, self.decode) for i in chunk]
            return [pool.submit(decode_resize, *a) if pool else _run_now(decode_resize, *a, split) for a in args]

        try:
            ahead = decode(chunks[0]) if chunks else []
            for n, chunk in enumerate(chunks):
                current = ahead
                # the next micro-batch decodes while this one runs: two of them in memory at most
                ahead = decode(chunks[n + 1]) if n + 1 < len(chunks) else []
                self._embed_chunk(chunk, current, out, errors)
                if progress is not None:
                    progress(chunk.stop)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return out, errors

    def _embed_chunk(self, chunk: range, decoded: list[Future[np.ndarray]], out: np.ndarray,
                     errors: list[str | None]) -> None:
        """Run one micro-batch: its images that decoded go to the model, in order, as one batch."""
        rows, pixels = [], []
        for i, future in zip(chunk, decoded, strict=True):
            try:
                pixels.append(future.result())
                rows.append(i)
            except ImageError as e:  # one bad image never takes the batch down
                errors[i] = str(e)
        if rows:
            out[rows] = self.image(model_input(np.stack(pixels), self.preprocess_cfg, self.image.artifact.inputs[0]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """[N, D] L2-normalised text embeddings; needs a text encoder in the bundle."""
        if isinstance(texts, str):
            texts = [texts]
        text, tokenize = self._text_encoder()
        ids = tokenize(list(texts))
        return np.concatenate([text(ids[i : i + self.max_batch]) for i in range(0, len(ids), self.max_batch)])

    def _text_encoder(self) -> tuple[Encoder, TextTokenizer]:
        with self._lock:
            if self._text is None or self._tokenizer is None:
                if not self.bundle.manifest.find("text"):
                    raise BundleError(
                        f"{self.bundle.root} has no text encoder, so labels cannot be computed on the device",
                        fix="re-export with --encoders image,text, or precompute labels at export (--labels)",
                    )
                # the same backend as the image tower when the bundle allows it
                same = self.bundle.manifest.find("text", backend_target(self.backend_name))
                backend = self.backend_name if same else "auto"
                precision = self._text_precision
                if precision not in (None, FASTEST) and not self.bundle.manifest.find(
                        "text", backend_target(backend) if same else None, precision):
                    precision = None  # e.g. an int8 image tower beside an fp32-only text tower
                self._text = load_encoder(self.bundle, "text", backend, precision, self.options)
                self._tokenizer = TextTokenizer(self.bundle.tokenizer_path(), self.bundle.manifest.tokenizer)
            return self._text, self._tokenizer

    # ---- labels --------------------------------------------------------------------------
    def set_labels(self, classes: Sequence[str], templates: Sequence[str] | None = None, name: str = "custom",
                   progress: PromptProgress | None = None) -> None:
        """Compute a new label set on the device (open vocabulary) and make it current; memory stays
        bounded by one batch of prompts, `progress(done, total)` is called after each batch."""
        tmpl = list(templates or DEFAULT_TEMPLATES)
        emb = label_embeddings(classes, tmpl, self.embed_texts, progress=progress)
        self._labels = Labels(name, [c.strip() for c in classes], emb, tmpl)

    def save_labels(self, name: str | None = None, overwrite: bool = False) -> None:
        """Write the current label set into the bundle (atomically) under `name`; replacing an
        existing set (e.g. the one made at export) needs overwrite=True. An install folder's version is
        never written into: the set goes into a new version made current (runtime/install.py)."""
        current = self._require_labels()
        name = name or current.name
        check_label_name_free(self.bundle, name, overwrite)
        text = self._text
        meta = {
            "classes": current.classes,
            "templates": current.templates,
            "computed_on_device_with": text.artifact.key if text else None,
            "text_artifact_sha256": text.artifact.files[text.artifact.main_file] if text else None,
            "embedding_space": text.artifact.embedding_space if text else None,
        }

        def write(bundle: Bundle) -> None:
            bundle.write_label_set(name, current.embeddings, meta)
            bundle.save_manifest()

        with self._lock:
            check_label_name_free(self.bundle, name, overwrite)  # another thread may have written it
            # an installed version is never written into: the change becomes a new version (install.py)
            self.bundle = save_bundle_change(self.bundle, write)

    # ---- classification ------------------------------------------------------------------
    def classify(self, images: Sequence[ImageInput] | ImageInput, top_k: int = 5,
                 threshold: float | None = None, progress: Progress | None = None) -> list[Classification]:
        """Rank the label set for each image, with probabilities under the bundle's scoring rule:
        softmax(logit_scale * cos) for CLIP, sigmoid(logit_scale * cos + logit_bias) per label for
        SigLIP. `threshold` (multi-label, sigmoid bundles only): every label at or above it, not top_k.
        `progress(done)` is called as micro-batches finish (see embed_images)."""
        if threshold is not None and self.scoring.rule != "sigmoid":
            raise ConfigError(f"multi-label needs independent per-label scores; this bundle scores by "
                              f"{self.scoring.rule}, whose probabilities compete",
                              fix="use top-k for this bundle; multi-label works with SigLIP bundles")
        single = isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or not isinstance(images, Sequence)
        batch: list[ImageInput] = [images] if single else list(images)  # type: ignore[list-item,arg-type]
        if not batch:
            raise EdgeclipError("no images given", fix="pass at least one image")
        labels = self._require_labels()  # one consistent label set for the whole call
        emb, errors = self.embed_images(batch, progress)
        k = max(1, min(top_k, len(labels.classes)))
        results = []
        for src, e, err in zip(batch, emb, errors, strict=True):
            name = str(src) if isinstance(src, (str, os.PathLike)) else type(src).__name__
            if err is not None:
                results.append(Classification(name, error=err))
                continue
            p = self.scoring.probabilities(labels.embeddings @ e)
            top = np.argsort(-p, kind="stable")
            top = top[p[top] >= threshold] if threshold is not None else top[:k]
            preds = [(labels.classes[i], float(p[i])) for i in top]
            results.append(Classification(name, preds, scoring=self.scoring.rule))
        return results


def _run_now(fn: Callable[..., np.ndarray], *args: Any) -> Future[np.ndarray]:
    """fn(*args) as an already finished Future, its ImageError kept for the caller."""
    future: Future[np.ndarray] = Future()
    try:
        future.set_result(fn(*args))
    except ImageError as e:
        future.set_exception(e)
    return future


def check_label_name_free(bundle: Bundle, name: str, overwrite: bool) -> None:
    """Refuse to replace an existing label set silently."""
    if name in bundle.manifest.labels and not overwrite:
        ls = bundle.manifest.labels[name]
        raise ConfigError(f"{bundle.root} already has a label set '{name}' ({ls.num_classes} classes)",
                          fix="pass --overwrite (overwrite=True) to replace it, or choose another --name")


def missing_label_set(bundle: Bundle, name: str) -> EdgeclipError:
    """A label set the bundle lacks, with how to add it (on this device, or at export)."""
    m = bundle.manifest
    if m.find("text"):
        add = (f"add it on this device: `edgeclip labels {bundle.root} --classes classes.txt --name {name}` "
               "(one class name per line), or export with `--labels classes.txt`")
    else:  # no text encoder: labels can only be computed at export
        add = "re-export with `--labels classes.txt` (one class name per line), or with --encoders image,text"
    if not m.labels:
        return BundleError(f"{bundle.root} has no label sets, so it cannot classify", fix=add)
    error = UnknownNameError("label set", name, m.labels)
    error.fix = f"{error.fix}; or {add}"
    return error


def load_encoder(bundle: Bundle, encoder: str, backend: str, precision: str | None,
                 options: BackendOptions) -> Encoder:
    """The encoder's artifact for `backend` at `precision`: None takes the backend's preference unless
    a comparison recorded on this host says otherwise (runtime/timings.py); "fastest" times the
    candidates now."""
    if precision == FASTEST:
        return _load_fastest(bundle, encoder, backend, options)
    name, artifact, reason = choose_artifact(bundle, encoder, backend, precision, options)
    path = bundle.artifact_path(artifact)  # verifies the sha256 before anything runs it
    return Encoder.open(path, artifact, name, options, reason)


def _load_fastest(bundle: Bundle, encoder: str, backend: str, options: BackendOptions) -> Encoder:
    name, candidates, chose = _backend_candidates(bundle, encoder, backend, None)
    candidates = _preferred_first(name, candidates)
    if len(candidates) < 2:
        return Encoder.open(bundle.artifact_path(candidates[0]), candidates[0], name, options,
                            f"{chose}; {candidates[0].precision}: the only precision")
    loaded = {a.key: Encoder.open(bundle.artifact_path(a), a, name, options) for a in candidates}
    choice = fastest_now({k: (e.artifact, e) for k, e in loaded.items()}, name, options)
    return replace(loaded[choice.artifact.key], reason=f"{chose}; {choice.reason}")


def choose_artifact(
    bundle: Bundle, encoder: str, backend: str, precision: str | None, options: BackendOptions | None = None
) -> tuple[str, Artifact, str]:
    """Pick (backend name, artifact, reason). An explicit backend must run here and have an artifact.
    With `options` and no precision asked for, a comparison recorded on this host under those
    options (runtime/timings.py) overrides the backend's precision preference."""
    name, candidates, chose = _backend_candidates(bundle, encoder, backend, precision)
    ranked = _preferred_first(name, candidates)
    best = ranked[0]
    if precision is not None or len(candidates) < 2:
        return name, best, chose
    # in the backend's order, so that a tie in the record keeps its preference
    measured = recorded_choice(ranked, name, options) if options else None
    if measured is not None:
        return name, measured.artifact, f"{chose}; {measured.reason}"
    return name, best, f"{chose}; {best.precision}: {NOT_MEASURED}"


def _preferred_first(backend: str, candidates: list[Artifact]) -> list[Artifact]:
    """`candidates` in the backend's precision preference (DEFAULT_PRECISION_ORDER unless it has its own)."""
    order = list(getattr(backend_class(backend), "precision_order", DEFAULT_PRECISION_ORDER))
    return sorted(candidates, key=lambda a: order.index(a.precision) if a.precision in order else len(order))


def _backend_candidates(bundle: Bundle, encoder: str, backend: str,
                        precision: str | None) -> tuple[str, list[Artifact], str]:
    """The first backend (of `backend`, or auto's order) that runs here and has artifacts for
    `encoder` (at `precision`, if given): its name, those artifacts, and why it was chosen."""
    m = bundle.manifest
    if backend == "auto":
        names, why = auto_order()
    else:
        backend_class(backend)  # unknown names raise with a suggestion
        names, why = [backend], "backend asked for"
    blocked: list[EdgeclipError] = []  # why backends with an artifact in the bundle cannot run here
    for name in names:
        candidates = m.find(encoder, backend_target(name), precision)
        if not candidates:
            continue
        if (reason := backend_class(name).unavailable()) is not None:
            blocked.append(reason)
            continue
        return name, candidates, f"{name}: {why}" if backend == "auto" else why
    have = sorted({f"{a.target}-{a.precision}" for a in m.artifacts if a.encoder == encoder})
    if blocked:
        raise _cannot_run_here(bundle, encoder, backend, have, blocked)
    want = f"backend '{backend}'" + (f" at precision '{precision}'" if precision else "")
    usable = [b for b in BACKENDS if backend_class(b).available()]
    raise BundleError(
        f"{bundle.root} has no {encoder} encoder for {want} (it has: {', '.join(have) or 'none'}; "
        f"installed backends: {', '.join(usable) or 'none'})",
        fix="export a target for this device with `edgeclip export --target ...`, or choose another backend",
    )


def _cannot_run_here(bundle: Bundle, encoder: str, backend: str, have: list[str],
                     blocked: list[EdgeclipError]) -> EdgeclipError:
    """The bundle has artifacts for some backend, but none of those backends runs here. A missing
    package is exit 3 (install it); another OS or no GPU is not fixed by installing anything."""
    what = f"{bundle.root} has a {encoder} encoder for {', '.join(have)}, but it cannot run here: "
    message = what + "; ".join(e.message for e in blocked)
    fix = "; or ".join(dict.fromkeys(e.fix for e in blocked if e.fix))
    if backend != "auto":
        return type(blocked[0])(message, fix=fix)
    if all(isinstance(e, MissingDependencyError) for e in blocked):
        return MissingDependencyError(message, fix=fix)
    return BundleError(message, fix=fix)
