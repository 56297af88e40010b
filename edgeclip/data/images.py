"""The image-file rules every reader follows: which suffixes are images, how a folder is listed,
and how a sample's bytes are checked before they are handed on."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "ImageLike", "is_decodable", "list_images"]

ImageLike = Union[str, os.PathLike[str], bytes, Image.Image]

# In order of preference: a WebDataset sample with both a .jpg and a .png member is read from the .jpg.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def item_index(index: int, length: int) -> int:
    """A sequence index made non-negative, or IndexError (the map-style datasets' rule)."""
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for {length} items")
    return index


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, searched recursively, sorted; hidden files and folders are left out
    (`.ipynb_checkpoints/`, macOS `._x.jpg`), whatever reads the folder."""
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p, root) and p.is_file())


def is_decodable(data: bytes) -> bool:
    """True when PIL can open `data` as an image (headers and PNG CRCs parsed, pixels not decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        return True
    except Exception:  # any failure means "PIL cannot open it": PIL raises many unrelated types
        return False
