"""`CalibrationSet`: a source's images, preprocessed once by the runtime's own code and cached.

The cache is an `.npz` (loaded with allow_pickle=False) named by a content hash over the source
files' bytes (or a builtin source's definition), the preprocess config and the requested size,
in `$EDGECLIP_CACHE` or ~/.cache/edgeclip/calib. Every target and every later run reuses it.
Pixels are cached as the resized, cropped uint8 image and normalised on load with
`edgeclip.runtime.preprocess.normalize`: bit-identical to `preprocess()`, at a quarter of the size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip._io import atomic_path
from edgeclip.bundle import PreprocessConfig
from edgeclip.calibration.listing import CalibrationItem, SourceListing, builtin_key, list_source
from edgeclip.errors import ConfigError, DataError, ImageError
from edgeclip.runtime.preprocess import load_image, normalize, resize_crop

log = logging.getLogger("edgeclip.calibration")

CACHE_FORMAT = 1
HELDOUT_FRACTION = 0.2  # of a file source's readable images, held out for the accuracy guard
FEW_IMAGES = 100  # below this, ranges are noisy: warn (never a Python warning)
DEFAULT_SIZE = 300


@dataclass
class CalibrationSet:
    """Preprocessed calibration and held-out images (float32 [N, 3, S, S]) plus captions."""

    source: str
    data_hash: str
    images: np.ndarray
    heldout: np.ndarray
    heldout_labels: list[str] | None  # true class names of the held-out images, when known
    captions: list[str]
    skipped: int  # unreadable images, skipped and counted
    cache_file: Path
    from_cache: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source, "data_sha256": self.data_hash, "size": len(self.images),
            "heldout_size": len(self.heldout), "skipped_images": self.skipped, "captions": len(self.captions),
        }


def cache_dir() -> Path:
    env = os.environ.get("EDGECLIP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeclip" / "calib"


def load_calibration_set(
    spec: str, cfg: PreprocessConfig, size: int = DEFAULT_SIZE, cache: Path | None = None
) -> CalibrationSet:
    """Preprocess (or load from the cache) up to `size` images of `spec`; see `list_source`."""
    if size < 2:
        raise ConfigError(f"--calib-size must be at least 2, got {size}", fix="use a few hundred images")
    listing: SourceListing | None = None
    if spec.startswith("builtin:"):
        content = builtin_key(spec, cfg.image_size)
    else:
        listing = list_source(spec, size, cfg.image_size)
        content = _files_hash(listing.items, listing.skipped)
    key = json.dumps({"format": CACHE_FORMAT, "content": content, "preprocess": dataclasses.asdict(cfg),
                      "size": size}, sort_keys=True)
    data_hash = hashlib.sha256(key.encode()).hexdigest()
    path = (cache or cache_dir()) / f"{data_hash[:32]}.npz"
    arrays = _read_cache(path)
    from_cache = arrays is not None
    if arrays is None:
        listing = listing or list_source(spec, size, cfg.image_size)
        arrays = _build(listing, cfg)
        _write_cache(path, arrays)
    result = _to_set(spec, data_hash, arrays, cfg, path, from_cache)
    log.info("calibration set %s: %d images, %d held out, %d skipped (%s)", spec, len(result.images),
             len(result.heldout), result.skipped, "cached" if from_cache else "preprocessed")
    return result


def _files_hash(items: list[CalibrationItem], skipped: int) -> str:
    h = hashlib.sha256(f"skipped by the reader: {skipped}\0".encode())
    for it in items:
        h.update(it.name.encode() + b"\0")
        try:
            data = it.read()
        except OSError:
            data = b"<unreadable>"  # counted as skipped when preprocessed
        h.update(hashlib.sha256(data if isinstance(data, bytes) else repr(data).encode()).digest())
        h.update((it.caption or "").encode() + b"\0")
    return h.hexdigest()


def _pixels(items: list[CalibrationItem], cfg: PreprocessConfig) -> tuple[list[np.ndarray], list[int]]:
    """uint8 [S, S, 3] per readable image, and the indices of those that were readable."""
    out, ok = [], []
    for i, it in enumerate(items):
        try:
            out.append(np.asarray(resize_crop(load_image(it.read()), cfg), dtype=np.uint8))
            ok.append(i)
        except (ImageError, OSError) as e:
            log.warning("calibration: skipped %s (%s)", it.name, e)
    return out, ok


def _build(listing: SourceListing, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    pixels, ok = _pixels(listing.items, cfg)
    skipped = listing.skipped + len(listing.items) - len(ok)
    kept = [listing.items[i] for i in ok]
    if listing.heldout:
        held_pixels, held_ok = _pixels(listing.heldout, cfg)
        skipped += len(listing.heldout) - len(held_ok)
        held_items = [listing.heldout[i] for i in held_ok]
    else:  # hold out the tail of the (already shuffled) readable images
        if len(pixels) < 2:
            raise DataError(f"calibration source {listing.spec} has {len(pixels)} readable image(s) "
                            f"({skipped} unreadable skipped); at least 2 are needed",
                            fix="add readable JPEG/PNG/WebP images (a few hundred is best)")
        n_held = max(1, round(len(pixels) * HELDOUT_FRACTION))
        held_pixels, pixels = pixels[-n_held:], pixels[:-n_held]
        held_items, kept = kept[-n_held:], kept[:-n_held]
    if not pixels or not held_pixels:
        raise DataError(f"calibration source {listing.spec} has no readable images ({skipped} skipped)")
    labels = [it.label or "" for it in held_items]
    return {
        "images": np.stack(pixels),
        "heldout": np.stack(held_pixels),
        "heldout_labels": np.array(labels if all(labels) else [], dtype=str),
        "captions": np.array([it.caption for it in kept + held_items if it.caption], dtype=str),
        "skipped": np.array(skipped, dtype=np.int64),
    }


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        # opened here: np.load leaves its own file handle open when the zip is broken
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # truncated or foreign: rebuild
        log.warning("calibration cache %s is unreadable (%s); rebuilding it", path, e)
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
    except OSError as e:  # a read-only cache is slower, not fatal
        log.warning("could not write the calibration cache %s: %s", path, e)


def _to_set(spec: str, data_hash: str, a: dict[str, np.ndarray], cfg: PreprocessConfig, path: Path,
            from_cache: bool) -> CalibrationSet:
    labels = [str(x) for x in a["heldout_labels"]]
    result = CalibrationSet(
        source=spec, data_hash=data_hash,
        images=_normalize(a["images"], cfg), heldout=_normalize(a["heldout"], cfg),
        heldout_labels=labels or None, captions=[str(c) for c in a["captions"]],
        skipped=int(a["skipped"]), cache_file=path, from_cache=from_cache,
    )
    if result.skipped:
        result.warnings.append(f"{result.skipped} unreadable calibration image(s) skipped")
    if len(result.images) < FEW_IMAGES:
        result.warnings.append(f"only {len(result.images)} calibration images (fewer than {FEW_IMAGES}): "
                               "activation ranges may be noisy")
    for w in result.warnings:
        log.warning("calibration: %s", w)
    return result


def _normalize(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    size = cfg.image_size
    if not len(pixels):
        return np.zeros((0, 3, size, size), np.float32)
    return np.stack([normalize(p, cfg) for p in pixels])
