"""The bundle: the one contract between the export side and the device runtime.

A bundle is a directory::

    NAME.edgeclip/
      manifest.json
      image/<target>-<precision>/...      split encoders, one folder per artifact
      text/<target>-<precision>/...
      labels/<name>.npy + <name>.json     L2-normalised [C, D] float32 label embeddings
      tokenizer.json

Every file is listed in the manifest with its sha256. This module uses only the
standard library and numpy, so it can ship to devices.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgeclip import __version__
from edgeclip._io import sha256_file, write_bytes, write_json
from edgeclip.errors import BundleError, EmbeddingSpaceError, UnknownNameError
from edgeclip.records import Calibration, Environment, Measured, Validation

__all__ = [
    "Artifact", "Bundle", "Calibration", "Environment", "LabelSet", "Manifest", "Measured", "PreprocessConfig",
    "TensorSpec", "TokenizerConfig", "Validation",
]

FORMAT = "edgeclip-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # detached signature over manifest.json's exact bytes (edgeclip.runtime.signing)
CURRENT = "current"  # in an install folder: the symlink to the live version (edgeclip.runtime.install)
VERSIONS = "versions"  # in an install folder: one folder per installed version, never written into
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few kB; refuse absurd ones before parsing
# how images are decoded and resized (edgeclip.runtime.preprocess): "exact" is the training
# transform bit for bit; "fast" decodes large JPEGs at reduced size and resamples only the crop
DECODES = ("exact", "fast")


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels reach the image encoder; the trainer's eval transform and the runtime share it."""

    image_size: int = 224
    # "shortest": the shortest side to image_size (aspect kept), then crop; "squash": straight to
    # image_size x image_size, aspect not kept, nothing cropped (SigLIP's processor)
    resize: str = "shortest"
    interpolation: str = "bicubic"
    crop: str = "center"  # "center" after "shortest"; "none" after "squash"
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    rescale_factor: float = 1 / 255  # uint8 -> [0, 1] before (x - mean) / std
    # the decode path (DECODES) the bundle's artifacts were validated with, and so the runtime's
    # default; a manifest without it predates the fast path and was validated with "exact"
    decode: str = "exact"

    def to_dict(self) -> dict[str, Any]:
        return _v1_compatible(self, ("rescale_factor", "decode"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        cfg = cls(**_known_fields(cls, d, "preprocess"))
        # refuse here what would otherwise fail (untyped) on the first image
        size = cfg.image_size
        if type(size) is not int or size < 1:
            raise BundleError(f"preprocess image_size must be a positive integer, got {size!r}")
        if cfg.interpolation not in ("bicubic", "bilinear"):
            raise BundleError(f"preprocess interpolation {cfg.interpolation!r} is not 'bicubic' or 'bilinear'")
        if (cfg.resize, cfg.crop) not in (("shortest", "center"), ("squash", "none")):
            raise BundleError(f"unsupported preprocess: resize {cfg.resize!r} with crop {cfg.crop!r}",
                              fix="use resize 'shortest' with crop 'center', or resize 'squash' with crop 'none'")
        if not cfg.rescale_factor > 0:
            raise BundleError(f"preprocess rescale_factor must be > 0, got {cfg.rescale_factor!r}")
        if cfg.channel_order != "RGB":  # images decode to RGB; another order would classify silently wrong
            raise BundleError(f"preprocess channel_order {cfg.channel_order!r}: this runtime feeds RGB pixels",
                              fix="upgrade edgeclip, or re-export the bundle with this version")
        if cfg.decode not in DECODES:
            raise BundleError(f"preprocess decode {cfg.decode!r} is not one of {list(DECODES)}",
                              fix="upgrade edgeclip, or re-export the bundle with this version")
        if len(cfg.mean) != 3 or len(cfg.std) != 3 or not all(v > 0 for v in cfg.std):
            raise BundleError(f"preprocess mean/std must be 3 values each (std > 0), got {cfg.mean}, {cfg.std}")
        return cfg


@dataclass(frozen=True)
class TokenizerConfig:
    """What the runtime needs to turn text into `input_ids` exactly as in training."""

    context_length: int = 77
    sot_id: int = 0
    eot_id: int = 1
    pad_id: int = 0
    pooling: str = "eot"  # "eot": read at the end-of-text token; "last": at the last position (SigLIP)
    lowercase: bool = True
    file: str = "tokenizer.json"
    # where padding goes ("right" or "left"), as the model's tokenizer config says
    padding_side: str = "right"
    # text rewriting before tokenizer.json: "none"; "lower" (str.lower); "canonicalize" (SigLIP's
    # SentencePiece tokenizer: lower-case, drop ASCII punctuation, collapse and strip whitespace)
    text_clean: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return _v1_compatible(self, ("padding_side", "text_clean"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        cfg = cls(**_known_fields(cls, d, "tokenizer"))
        for name, allowed in (("pooling", ("eot", "last")), ("padding_side", ("right", "left")),
                              ("text_clean", ("none", "lower", "canonicalize"))):
            if getattr(cfg, name) not in allowed:
                raise BundleError(f"tokenizer {name} {getattr(cfg, name)!r} is not one of {list(allowed)}",
                                  fix="re-export the bundle with this edgeclip version")
        return cfg


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # str entries are symbolic, e.g. "batch_size"
    # image inputs: "NHWC" for uint8 pixels normalised inside the graph; None is the float NCHW
    # tensor of `preprocess` (bundles written before layouts were recorded have only that)
    layout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        return {**d, "layout": self.layout} if self.layout else d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        layout = d.get("layout")
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(d["shape"]),
                   layout=None if layout is None else str(layout))


@dataclass
class Artifact:
    """One exported encoder for one target and precision."""

    encoder: str  # "image" | "text"
    target: str  # "onnx" | "openvino" | "tensorrt" | "coreml"
    precision: str  # "fp32" | "fp16" | "int8" ...
    path: str  # folder relative to the bundle root
    files: dict[str, str]  # file path relative to the bundle root -> sha256
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    validation: Validation = field(default_factory=Validation)
    environment: Environment = field(default_factory=Environment)
    calibration: Calibration | None = None  # INT8 only
    # what decides the output vectors (tower weights and projection, preprocessing or tokenizer), so
    # precision variants share it; None in bundles written before it was recorded
    embedding_space: str | None = None

    @property
    def key(self) -> str:
        return f"{self.encoder}/{self.target}-{self.precision}"

    @property
    def main_file(self) -> str:
        """The file a backend opens (the first listed)."""
        return next(iter(self.files))

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder, "target": self.target, "precision": self.precision, "path": self.path,
            "files": self.files,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "validation": self.validation.to_dict(),
            "environment": self.environment.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            **({"embedding_space": self.embedding_space} if self.embedding_space else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        d = dict(d)
        name = f"artifact {d.get('encoder')}/{d.get('target')}-{d.get('precision')}"
        d["inputs"] = [TensorSpec.from_dict(s) for s in d.get("inputs", [])]
        d["outputs"] = [TensorSpec.from_dict(s) for s in d.get("outputs", [])]
        if not isinstance(d.get("files"), dict) or not d["files"]:
            raise BundleError(f"{name} lists no files")
        if not d["inputs"] or not d["outputs"]:
            raise BundleError(f"{name} lists no inputs or no outputs")
        where = f"{MANIFEST}: {name}"
        d["validation"] = Validation.from_dict(d.get("validation", {}), f"{where} validation")
        d["environment"] = Environment.from_dict(d.get("environment", {}), f"{where} environment")
        if d.get("calibration") is not None:
            d["calibration"] = Calibration.from_dict(d["calibration"], f"{where} calibration")
        d["embedding_space"] = _optional_str(d.get("embedding_space"), f"{name} embedding_space")
        return cls(**_known_fields(cls, d, "artifact"))


@dataclass
class LabelSet:
    name: str
    embeddings: str  # .npy path relative to the bundle root
    meta: str  # .json path
    files: dict[str, str]  # path -> sha256
    num_classes: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSet:
        return cls(**_known_fields(cls, d, "label set"))


@dataclass
class Manifest:
    model_name: str
    model_config: dict[str, Any]
    embed_dim: int
    logit_scale: float  # already exp()'d: logits = logit_scale * cosine
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    tokenizer_sha256: str
    artifacts: list[Artifact] = field(default_factory=list)
    labels: dict[str, LabelSet] = field(default_factory=dict)
    edgeclip_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    # sha256 over the checkpoint's tensors: only artifacts of these weights may join the bundle.
    # None in bundles written before it was recorded (their weights are unknown)
    source_weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "edgeclip_version": self.edgeclip_version,
            "model": {"name": self.model_name, "config": self.model_config},
            **({"source_weights_sha256": self.source_weights_sha256} if self.source_weights_sha256 else {}),
            "embed_dim": self.embed_dim,
            "logit_scale": self.logit_scale,
            "preprocess": self.preprocess.to_dict(),
            "tokenizer": {**self.tokenizer.to_dict(), "sha256": self.tokenizer_sha256},
            "artifacts": [a.to_dict() for a in self.artifacts],
            "labels": {k: dataclasses.asdict(v) for k, v in self.labels.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"{MANIFEST} is not an edgeclip bundle manifest (format != '{FORMAT}')")
        version = d.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:  # not True, not 1.0
            raise BundleError(
                f"bundle schema_version {version!r} is not supported (this edgeclip reads {SCHEMA_VERSION})",
                fix="re-export the bundle with this edgeclip version, or upgrade edgeclip",
            )
        try:
            tok = dict(d["tokenizer"])
            manifest = cls(
                model_name=str(d["model"]["name"]),
                model_config=dict(d["model"]["config"]),
                embed_dim=int(d["embed_dim"]),
                logit_scale=float(d["logit_scale"]),
                preprocess=PreprocessConfig.from_dict(d["preprocess"]),
                tokenizer_sha256=str(tok.pop("sha256")),
                tokenizer=TokenizerConfig.from_dict(tok),
                artifacts=[Artifact.from_dict(a) for a in d["artifacts"]],
                labels={k: LabelSet.from_dict(v) for k, v in d.get("labels", {}).items()},
                edgeclip_version=str(d.get("edgeclip_version", "?")),
                schema_version=int(version),
                source_weights_sha256=_optional_str(d.get("source_weights_sha256"), "source_weights_sha256"),
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{MANIFEST} is malformed: {type(e).__name__}: {e}") from e
        for a in manifest.artifacts:
            _check_shapes(a, manifest)
        for owner, rel in manifest.paths():
            check_path(rel, owner)
        return manifest

    def paths(self) -> list[tuple[str, str]]:
        """(owner, path) of every path the manifest names, used or not."""
        out = [("tokenizer", self.tokenizer.file)]
        for a in self.artifacts:
            out += [(f"artifact {a.key}", rel) for rel in (a.path, *a.files)]
        for name, ls in self.labels.items():
            out += [(f"label set '{name}'", rel) for rel in (ls.embeddings, ls.meta, *ls.files)]
        return out

    def embedding_space(self, encoder: str) -> str | None:
        """The space `encoder`'s artifacts embed into; None when none of them records one."""
        spaces = {a.embedding_space for a in self.find(encoder) if a.embedding_space}
        if len(spaces) > 1:  # export builds every artifact from one checkpoint: a mix is a spliced bundle
            raise BundleError(f"{MANIFEST}: the {encoder} artifacts record {len(spaces)} different embedding "
                              "spaces", fix="re-export the bundle: one bundle holds one model")
        return next(iter(spaces), None)

    def find(self, encoder: str, target: str | None = None, precision: str | None = None) -> list[Artifact]:
        return [
            a
            for a in self.artifacts
            if a.encoder == encoder
            and (target is None or a.target == target)
            and (precision is None or a.precision == precision)
        ]


def _check_shapes(a: Artifact, m: Manifest) -> None:
    """Fixed dims of an encoder's first input/output must match image_size and embed_dim."""
    size = m.preprocess.image_size
    ins, outs = a.inputs[0].shape, a.outputs[0].shape
    spatial = ins[1:3] if a.inputs[0].layout == "NHWC" else ins[2:]
    wrong = a.encoder == "image" and len(ins) == 4 and any(isinstance(v, int) and v != size for v in spatial)
    if wrong or (outs and isinstance(outs[-1], int) and outs[-1] != m.embed_dim):
        raise BundleError(f"artifact {a.key} has shapes {list(ins)} -> {list(outs)}, which do not fit "
                          f"image_size {size} and embed_dim {m.embed_dim} in {MANIFEST}")


def check_path(rel: Any, owner: str) -> PurePosixPath:
    """A manifest path must stay inside the bundle: relative, POSIX separators, no '..'."""
    if not isinstance(rel, str):
        raise BundleError(f"{MANIFEST}: {owner} has a path that is not a string: {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in rel:
        raise BundleError(f"{MANIFEST}: {owner} path '{rel}' escapes the bundle; refusing it",
                          fix="re-export the bundle: a manifest names only relative paths inside its folder")
    return p


def _refuse_symlinks(root: Path, rel: str, owner: str) -> Path:
    """root/rel, refused if any part of it is a symlink (which could point anywhere; bundles never
    contain them). Parts that do not exist are left to the sha256 check."""
    cur, parts = root, PurePosixPath(rel).parts
    for i, part in enumerate(parts):
        cur = cur / part
        if cur.is_symlink():
            link = "/".join(parts[: i + 1])
            where = "is a symlink" if link == rel else f"goes through the symlink '{link}'"
            raise BundleError(f"bundle path '{rel}' ({owner}) {where}; refusing it",
                              fix="copy the bundle with its files, not links (cp -r, not cp -s)")
    return cur


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BundleError(f"{MANIFEST}: {what} must be a string, got {type(value).__name__}")
    return value


def _v1_compatible(config: Any, added: tuple[str, ...]) -> dict[str, Any]:
    """asdict, leaving out the fields added for SigLIP while they hold their defaults: a CLIP
    manifest then reads, and re-saves byte for byte, as schema v1 wrote it (and older readers,
    which refuse unknown fields, still open it)."""
    d = dataclasses.asdict(config)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return {k: v for k, v in d.items() if k not in added or v != defaults[k]}


def _known_fields(cls: Any, d: dict[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise BundleError(f"{what} entry has unknown fields: {sorted(unknown)}")
    return d


class Bundle:
    """A bundle directory on disk: manifest plus verified file access."""

    def __init__(self, root: Path, manifest: Manifest, manifest_bytes: bytes | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes  # as read by `open`: what a signature covers
        self._verified: set[str] = set()

    # ---- reading -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Bundle:
        root = Path(path)
        if not (root / MANIFEST).exists() and (root / CURRENT).is_symlink():  # an install folder
            root = (root / CURRENT).resolve()
        mpath = root / MANIFEST
        if not root.is_dir():
            raise BundleError(f"bundle not found: {root}", fix="pass the directory written by `edgeclip export`")
        if not mpath.is_file():
            raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath} is larger than {MAX_MANIFEST_BYTES} bytes; refusing to parse it")
        try:
            raw = mpath.read_bytes()
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: [[[[...
            raise BundleError(f"{mpath} is not valid JSON: {type(e).__name__}: {e}") from e
        manifest = Manifest.from_dict(data)  # refuses paths that escape
        for owner, rel in manifest.paths():
            _refuse_symlinks(root, rel, owner)
        return cls(root, manifest, raw)

    def resolve(self, rel: str) -> Path:
        """Map a manifest path to a file inside the bundle; refuse anything that escapes it (checked
        again here: the manifest may have been edited in memory, a link made since `open`)."""
        check_path(rel, "bundle")
        return _refuse_symlinks(self.root, rel, "bundle")

    def verify_files(self, files: dict[str, str]) -> None:
        """Check existence and sha256 of each file (once per file per Bundle object)."""
        for rel, expected in files.items():
            if rel in self._verified:
                continue
            full = self.resolve(rel)
            if not full.is_file():
                raise BundleError(f"bundle file missing: {rel}", fix="re-export the bundle or copy it whole")
            actual = sha256_file(full)
            if actual != expected:
                raise BundleError(
                    f"bundle file '{rel}' does not match its sha256 in {MANIFEST} (tampered or corrupt)",
                    fix="re-export the bundle or copy it again",
                )
            self._verified.add(rel)

    def verify(self) -> None:
        """Verify every file the manifest lists."""
        m = self.manifest
        self.verify_files({m.tokenizer.file: m.tokenizer_sha256})
        for a in m.artifacts:
            self.verify_files(a.files)
        for ls in m.labels.values():
            self.verify_files(ls.files)

    def artifact_path(self, artifact: Artifact) -> Path:
        self.verify_files(artifact.files)
        return self.resolve(artifact.main_file)

    def tokenizer_path(self) -> Path:
        m = self.manifest
        self.verify_files({m.tokenizer.file: m.tokenizer_sha256})
        return self.resolve(m.tokenizer.file)

    def label_set(self, name: str = "default") -> tuple[np.ndarray, dict[str, Any]]:
        """Return ([C, D] float32 embeddings, metadata with 'classes')."""
        if name not in self.manifest.labels:
            raise UnknownNameError("label set", name, self.manifest.labels)
        ls = self.manifest.labels[name]
        if ls.embeddings not in ls.files or ls.meta not in ls.files:  # never read an unverified file
            raise BundleError(f"label set '{name}': {ls.embeddings} and {ls.meta} must be listed in its files")
        self.verify_files(ls.files)
        try:
            emb = np.load(self.resolve(ls.embeddings), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # object arrays need pickle: refuse
            raise BundleError(f"label file '{ls.embeddings}' is not a plain float array: {e}") from e
        try:
            meta = json.loads(self.resolve(ls.meta).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise BundleError(f"label file '{ls.meta}' is not valid JSON: {type(e).__name__}: {e}") from e
        classes = meta.get("classes") if isinstance(meta, dict) else None
        if (
            emb.dtype != np.float32
            or emb.ndim != 2
            or not isinstance(classes, list)
            or emb.shape != (len(classes), self.manifest.embed_dim)
        ):
            raise BundleError(
                f"label set '{name}' is inconsistent: embeddings {emb.dtype}{list(emb.shape)}, "
                f"{len(classes) if isinstance(classes, list) else '?'} classes, embed_dim {self.manifest.embed_dim}"
            )
        self._check_label_space(name, meta.get("embedding_space"))
        return emb, meta

    def _check_label_space(self, name: str, space: Any) -> None:
        """Label embeddings are text vectors: they are valid only in the space of this bundle's text
        encoder. Sets that record no space (older bundles), or bundles without a text encoder, pass."""
        text = self.manifest.embedding_space("text")
        if space is None or text is None or space == text:
            return
        raise EmbeddingSpaceError(
            f"label set '{name}' was computed in embedding space {str(space)[:12]}..., but this bundle's text "
            f"encoder embeds into {text[:12]}... (another model); its scores would be meaningless",
            fix=f"recompute it: `edgeclip labels {self.root} --classes classes.txt --name {name} --overwrite`",
        )

    # ---- writing -------------------------------------------------------------------------
    def add_artifact(self, artifact: Artifact) -> None:
        self.manifest.artifacts = [a for a in self.manifest.artifacts if a.key != artifact.key]
        self.manifest.artifacts.append(artifact)

    def write_label_set(self, name: str, embeddings: np.ndarray, meta: dict[str, Any]) -> LabelSet:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        npy, js = f"labels/{name}.npy", f"labels/{name}.json"
        import io

        buf = io.BytesIO()
        np.save(buf, emb, allow_pickle=False)
        write_bytes(self.root / npy, buf.getvalue())
        write_json(self.root / js, meta)
        ls = LabelSet(
            name=name,
            embeddings=npy,
            meta=js,
            files={npy: sha256_file(self.root / npy), js: sha256_file(self.root / js)},
            num_classes=int(emb.shape[0]),
        )
        self.manifest.labels[name] = ls
        return ls

    def save_manifest(self) -> bool:
        """Write the manifest; a signature over the old one no longer holds and is removed. Returns
        True when one was removed (the caller says so: the bundle must be signed again)."""
        stale = self.root / SIGNATURE
        signed = stale.exists()
        stale.unlink(missing_ok=True)  # first: a crash in between leaves an unsigned bundle, never a stale pair
        write_json(self.root / MANIFEST, self.manifest.to_dict())
        return signed


def installed_folder(root: Path) -> Path | None:
    """The install folder (INTO/NAME) when `root` is one of its versions (what `Bundle.open(INTO/NAME)`
    resolves to), else None."""
    folder = root.parent.parent
    if root.parent.name == VERSIONS and (folder / CURRENT).is_symlink():
        return folder
    return None
