"""Calibration image sources: folder, csv/tsv, webdataset tar, or `builtin:shapes`.

A source is listed, not read: `CalibrationItem.read` returns what `preprocess` accepts (bytes or
a PIL image), so only the images actually used are decoded. Torch-free: the runtime side may
import this module.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import DataError, UnknownNameError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_COLUMNS = ("caption", "text", "title")
BUILTIN = ("builtin:shapes",)
BUILTIN_HELDOUT = 400  # held-out images of a builtin source: 0.25-point top-1 resolution
SELECTION_SEED = 0


@dataclass(frozen=True)
class CalibrationItem:
    """One image of a source: a stable name, a reader, and its caption when the source has one."""

    name: str
    read: Callable[[], Any]  # -> bytes | PIL.Image.Image
    caption: str | None = None
    label: str | None = None  # true class name, known for builtin sources


@dataclass
class SourceListing:
    """The images of a source to calibrate on and, for builtin sources, a separate held-out split."""

    spec: str
    items: list[CalibrationItem]
    heldout: list[CalibrationItem] = field(default_factory=list)  # empty: split `items` instead


def list_source(spec: str, size: int, image_size: int) -> SourceListing:
    """List at most `size` images of `spec` (a deterministic, seeded choice when there are more)."""
    if spec.startswith("builtin:"):
        return _builtin(spec, size, image_size)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"calibration source not found: {spec}",
                        fix="pass an image folder, a .csv/.tsv with a filepath column, a .tar or builtin:shapes")
    if path.is_dir():
        items = _folder(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        items = _table(path)
    elif path.suffix.lower() == ".tar" or tarfile.is_tarfile(path):
        items = _tar(path)
    else:
        raise DataError(f"unsupported calibration source {spec}", fix="use a folder, .csv/.tsv, .tar or builtin:shapes")
    if not items:
        raise DataError(f"calibration source {spec} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                        fix="point --calib at a folder (searched recursively) or file that lists images")
    return SourceListing(spec, _choose(items, size))


def _choose(items: list[CalibrationItem], size: int) -> list[CalibrationItem]:
    """Sorted by name, then shuffled with a fixed seed: a class-per-folder layout must not put one
    class in the held-out tail."""
    items = sorted(items, key=lambda it: it.name)
    order = np.random.default_rng(SELECTION_SEED).permutation(len(items))
    return [items[i] for i in order[:size]]


def _file_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _folder(root: Path) -> list[CalibrationItem]:
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return [CalibrationItem(p.relative_to(root).as_posix(), _file_reader(p)) for p in files]


def _table(path: Path) -> list[CalibrationItem]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read calibration table {path}: {e}") from e
    columns = list(rows[0]) if rows else []
    if "filepath" not in columns:
        raise DataError(f"{path} has no 'filepath' column (columns: {columns})",
                        fix="name the image path column 'filepath' (paths relative to the table)")
    caption_col = next((c for c in CAPTION_COLUMNS if c in columns), None)
    items = []
    for row in rows:
        rel = (row.get("filepath") or "").strip()
        if rel:  # a missing file is read (and counted as skipped) like a corrupt one
            caption = (row.get(caption_col) or "").strip() if caption_col else ""
            items.append(CalibrationItem(rel, _file_reader(path.parent / rel), caption or None))
    return items


def _tar(path: Path) -> list[CalibrationItem]:
    """A webdataset shard: <key>.jpg|png|webp with an optional <key>.txt caption."""
    try:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            captions = {
                name.rsplit(".", 1)[0]: _read_member(tar, m).decode("utf-8", "replace").strip()
                for name, m in members.items() if name.lower().endswith((".txt", ".caption"))
            }
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"cannot read calibration tar {path}: {e}") from e
    items = []
    for name in members:
        if name.lower().endswith(TAR_IMAGE_SUFFIXES):
            items.append(CalibrationItem(name, _tar_reader(path, name), captions.get(name.rsplit(".", 1)[0]) or None))
    return items


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    return f.read() if f is not None else b""


def _tar_reader(path: Path, name: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with tarfile.open(path) as tar:
            return _read_member(tar, tar.getmember(name))

    return read


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _builtin(spec: str, size: int, image_size: int) -> SourceListing:
    if spec not in BUILTIN:
        raise UnknownNameError("built-in calibration source", spec, BUILTIN)
    from edgeclip.train.shapes import ShapesDataset

    def items(split: str, n: int) -> list[CalibrationItem]:
        ds = ShapesDataset(split, size=n, image_size=image_size, seed=SELECTION_SEED)  # type: ignore[arg-type]
        out = []
        for i in range(n):
            s = ds[i]
            out.append(CalibrationItem(f"{split}/{i}", _constant(s.image), s.caption, s.shape))
        return out

    return SourceListing(spec, items("train", size), items("heldout", BUILTIN_HELDOUT))


def builtin_key(spec: str, image_size: int) -> str:
    """What a procedural source's images depend on (its generator is deterministic)."""
    key = json.dumps({"spec": spec, "image_size": image_size, "seed": SELECTION_SEED, "heldout": BUILTIN_HELDOUT})
    return hashlib.sha256(key.encode()).hexdigest()
