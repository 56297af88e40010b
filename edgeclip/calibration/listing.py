"""Which images a calibration source holds: listed, not read.

Every format is read by `edgeclip.data`, with the same rules as training (a table's byte-order
mark, its required `filepath` column, a tar sample's key, the image suffixes); builtin sources
use the built-in datasets' own train and held-out splits. `CalibrationItem.read` returns what
`preprocess` accepts (bytes or a PIL image), so only the images actually used are decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.data.builtin import REFERENCE_SEED, SHAPES_HELDOUT_SEED_OFFSET, shapes_heldout, shapes_train
from edgeclip.data.images import IMAGE_SUFFIXES, list_images
from edgeclip.data.shards import WebDatasetSource, is_webdataset
from edgeclip.data.tables import TABLE_SUFFIXES, read_caption_file
from edgeclip.errors import DataError, UnknownNameError

__all__ = ["BUILTIN", "BUILTIN_HELDOUT", "SELECTION_SEED", "CalibrationItem", "SourceListing", "builtin_key",
           "list_source"]

BUILTIN = ("builtin:shapes",)
BUILTIN_HELDOUT = 400  # held-out images of a builtin source: 0.25-point top-1 resolution
SELECTION_SEED = 0  # which files of a larger source are chosen, and in what order
_FIX = "pass an image folder, a .csv/.tsv/.jsonl with a filepath column, .tar shards or builtin:shapes"


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
    skipped: int = 0  # images the reader already dropped as undecodable (tar shards check while reading)


def list_source(spec: str, size: int, image_size: int) -> SourceListing:
    """List at most `size` images of `spec` (a deterministic, seeded choice when there are more)."""
    if spec.startswith("builtin:"):
        return _builtin(spec, size, image_size)
    if is_webdataset(spec):
        return _shards(spec, size)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"calibration source not found: {spec}", fix=_FIX)
    if path.is_dir():
        items = [CalibrationItem(p.relative_to(path).as_posix(), p.read_bytes) for p in list_images(path)]
    elif path.suffix.lower() in TABLE_SUFFIXES:
        items = _caption_file(path)
    else:
        raise DataError(f"unsupported calibration source {spec}", fix=_FIX)
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


def _caption_file(path: Path) -> list[CalibrationItem]:
    rows = read_caption_file(path, need_caption=False)
    # a missing file is read (and counted as skipped) like a corrupt one
    return [CalibrationItem(os.path.relpath(p, path.parent), Path(p).read_bytes, c or None)
            for p, c in zip(rows.paths, rows.captions, strict=True)]


def _shards(spec: str, size: int) -> SourceListing:
    """Two streaming passes: list every sample's key, then keep the bytes of the chosen ones only."""
    source = WebDatasetSource(spec, require_caption=False)
    listed = [CalibrationItem(s.key, _constant(b""), s.caption or None) for s in source.all_samples()]
    skipped = source.skipped["undecodable_image"] + source.skipped["truncated"]
    if not listed:
        raise DataError(f"calibration source {spec} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                        fix="check the shards: each sample needs an image member such as 000001.jpg")
    chosen = _choose(listed, size)
    wanted = {it.name for it in chosen}
    data = {s.key: s.image for s in WebDatasetSource(spec, require_caption=False).all_samples() if s.key in wanted}
    items = [replace(it, read=_constant(data.get(it.name, b""))) for it in chosen]  # b"": gone since pass 1
    return SourceListing(spec, items, skipped=skipped)


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _builtin(spec: str, size: int, image_size: int) -> SourceListing:
    if spec not in BUILTIN:
        raise UnknownNameError("built-in calibration source", spec, BUILTIN)
    train = shapes_train(image_size, REFERENCE_SEED, size)
    held = shapes_heldout(image_size, REFERENCE_SEED, BUILTIN_HELDOUT)

    def items(split: str, ds: Any) -> list[CalibrationItem]:
        return [CalibrationItem(f"{split}/{i}", _constant(s.image), s.caption, s.shape)
                for i, s in ((i, ds[i]) for i in range(len(ds)))]

    return SourceListing(spec, items("train", train), items("heldout", held))


FINGERPRINT_ITEMS = 16  # of each split, hashed into the cache key: enough to see most shapes and colours


def builtin_key(spec: str, image_size: int) -> str:
    """What a procedural source's images depend on (its generator is deterministic), with a
    fingerprint of its first images, so a changed generator is not served from an old cache."""
    key = json.dumps({"spec": spec, "image_size": image_size, "seed": REFERENCE_SEED, "heldout": BUILTIN_HELDOUT,
                      "heldout_seed": REFERENCE_SEED + SHAPES_HELDOUT_SEED_OFFSET})
    h = hashlib.sha256(key.encode())
    for ds in (shapes_train(image_size, REFERENCE_SEED, FINGERPRINT_ITEMS),
               shapes_heldout(image_size, REFERENCE_SEED, FINGERPRINT_ITEMS)):
        for i in range(len(ds)):
            s = ds[i]
            h.update(np.asarray(s.image).tobytes() + f"\0{s.caption}\0{s.shape}\0".encode())
    return h.hexdigest()

