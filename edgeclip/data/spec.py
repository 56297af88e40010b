"""A `--data` spec -> its reader: builtin:shapes, builtin:digits, a .csv/.tsv/.jsonl caption file,
a class folder (random access), or WebDataset shards (streamed, see `shards`).

A map source yields (image, caption) where the image is anything
`edgeclip.runtime.preprocess.load_image` accepts; file sources yield paths, so a missing or
broken file surfaces as an `ImageError` for that one sample when it is decoded, instead of an
eager scan of every row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from edgeclip.data.builtin import BUILTINS, SPLITS, digits_split_of, open_builtin
from edgeclip.data.digits import ZERO_SHOT_CLASSES, ZERO_SHOT_TEMPLATES
from edgeclip.data.folders import (
    FOLDER_ZERO_SHOT_TEMPLATES,
    FolderSource,
    folder_classes,
    has_split_dirs,
    open_class_folder,
)
from edgeclip.data.images import ImageLike, item_index
from edgeclip.data.shards import WebDatasetSource, is_webdataset
from edgeclip.data.tables import TABLE_SUFFIXES, read_caption_file
from edgeclip.errors import ConfigError, DataError

__all__ = ["BUILTINS", "CaptionDataset", "MapSource", "heldout_items", "open_map_source", "open_source",
           "open_stream", "zero_shot_eval_spec"]

_FIX_SPEC = (
    "pass builtin:digits, builtin:shapes, a .csv/.tsv with filepath,caption columns, a .jsonl, "
    "a folder with one sub-folder per class, or .tar shards"
)


class MapSource(Protocol):
    """Random access, deterministic: item i depends only on (spec, seed, split, i)."""

    name: str

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[ImageLike, str]: ...  # IndexError out of range


CaptionDataset = MapSource  # what the trainer's loader reads


class CaptionListSource:
    """(path, caption) rows of a CSV/TSV/JSONL file; images are decoded by whoever reads them."""

    def __init__(self, name: str, paths: list[str], captions: list[str]) -> None:
        self.name, self._paths, self._captions = name, paths, captions

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> tuple[ImageLike, str]:
        index = item_index(index, len(self._paths))
        return self._paths[index], self._captions[index]


def open_map_source(spec: str, *, image_size: int, seed: int = 0, split: str = "train") -> MapSource:
    """Open a random-access source by spec (see the module docstring for the kinds)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    source: MapSource
    if spec.startswith("builtin:"):
        source = open_builtin(spec, split, image_size, seed)
    elif is_webdataset(spec):
        raise DataError(f"'{spec}' is a WebDataset (tar shards): it is streamed, not opened by index",
                        fix="open it with WebDatasetSource")
    else:
        source = _open_path(Path(spec).expanduser(), split, seed)
    if len(source) == 0:
        raise DataError(f"data source '{spec}' is empty", fix="point it at a source with at least one image")
    return source


def _open_path(path: Path, split: str, seed: int) -> MapSource:
    if not path.exists():
        raise DataError(f"data source not found: {path}", fix=_FIX_SPEC)
    if path.is_dir():
        try:
            return FolderSource(str(path), open_class_folder(path, split), seed)
        except OSError as e:
            raise DataError(f"cannot read data source {path}: {e}", fix="check that it is readable") from e
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"unsupported data source '{path}'", fix=_FIX_SPEC)
    if split != "train":
        raise DataError(f"{path} has no held-out split", fix="evaluate on a separate file or a val/ folder")
    rows = read_caption_file(path, need_caption=True)
    return CaptionListSource(str(path), rows.paths, rows.captions)


def open_source(spec: str, *, image_size: int, seed: int = 0) -> MapSource:
    """The train split of a map-style training source (procedural ones are effectively endless)."""
    if is_webdataset(spec):
        raise DataError(f"'{spec}' is a WebDataset: it is streamed, not indexed",
                        fix="use it as the only --data source")
    return open_map_source(spec, image_size=image_size, seed=seed, split="train")


def open_stream(spec: str, seed: int) -> WebDatasetSource:
    return WebDatasetSource(spec, seed=seed)


def zero_shot_eval_spec(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(class names, prompt templates) of a source's zero-shot evaluation, or None if it has none.

    builtin:shapes has its own two-attribute evaluation (`tasks`), so it returns None here.
    """
    if spec == "builtin:digits":
        return ZERO_SHOT_CLASSES, ZERO_SHOT_TEMPLATES
    path = Path(spec).expanduser()
    if spec.startswith("builtin:") or not path.is_dir():
        return None
    try:
        _, classes = folder_classes(path)
    except OSError as e:
        raise DataError(f"cannot read data source {path}: {e}") from e
    return (classes, FOLDER_ZERO_SHOT_TEMPLATES) if classes else None


def heldout_items(spec: str, *, image_size: int, seed: int = 0) -> list[tuple[ImageLike, int]] | None:
    """Held-out (image, target) pairs, targets indexing zero_shot_eval_spec's class names; None if none.

    builtin:digits: its 20 % split (never seen in training with the same seed); a class folder:
    its val/ sub-folder when it has train/ and val/, else None.
    """
    if spec == "builtin:digits":
        held = digits_split_of("heldout", image_size, seed)
        return [(held[i][0], held.label(i)) for i in range(len(held))]
    path = Path(spec).expanduser()
    if spec.startswith("builtin:") or not path.is_dir() or not has_split_dirs(path):
        return None
    source = open_map_source(spec, image_size=image_size, seed=seed, split="heldout")
    assert isinstance(source, FolderSource)
    return source.labelled()
