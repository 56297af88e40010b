"""Training data sources: built-ins, caption files, class folders (random access) and WebDataset shards (streamed).

A map source yields (image, caption) where the image is anything
`edgeclip.runtime.preprocess.load_image` accepts; file sources yield paths, so a missing or
broken file surfaces as an `ImageError` for that one sample when the trainer decodes it,
instead of an eager scan of every row. numpy and Pillow only at module top: this module
never imports torch, and scikit-learn/braceexpand are imported where they are needed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, Union

import numpy as np
from PIL import Image

from edgeclip._deps import require
from edgeclip.errors import ConfigError, DataError, UnknownNameError

__all__ = [
    "BUILTINS", "FOLDER_CAPTIONS", "FOLDER_ZERO_SHOT_TEMPLATES", "ImageLike", "MapSource", "WebDatasetSource",
    "class_name", "heldout_items", "is_webdataset", "open_map_source", "zero_shot_eval_spec",
]

ImageLike = Union[str, os.PathLike[str], bytes, Image.Image]

BUILTINS: tuple[str, ...] = ("builtin:digits", "builtin:shapes")
SPLITS: tuple[str, ...] = ("train", "heldout")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Procedural shapes never repeat, so the train split is "as long as any run needs".
SHAPES_TRAIN_SIZE = 1_000_000
SHAPES_HELDOUT_SIZE = 480
# Class-folder captions; "a photo of a {}." is also the zero-shot prompt, the standard CLIP one.
FOLDER_CAPTIONS: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image showing a {}.",
    "a {}.",
    "{}",
    "a close-up photo of the {}.",
)
FOLDER_ZERO_SHOT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
_FIX_SPEC = (
    "pass builtin:digits, builtin:shapes, a .csv/.tsv with filepath,caption columns, a .jsonl, "
    "a folder with one sub-folder per class, or .tar shards"
)


class MapSource(Protocol):
    """Random access, deterministic: item i depends only on (spec, seed, split, i)."""

    name: str

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[ImageLike, str]: ...  # IndexError out of range


def _check_index(index: int, n: int) -> int:
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for {n} items")
    return index


class _ShapesSource:
    def __init__(self, split: str, image_size: int, seed: int) -> None:
        from edgeclip.train.shapes import ShapesDataset

        size = SHAPES_TRAIN_SIZE if split == "train" else SHAPES_HELDOUT_SIZE
        self.name = "builtin:shapes"
        self._ds = ShapesDataset("train" if split == "train" else "heldout", size, image_size, seed)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> tuple[ImageLike, str]:
        s = self._ds[index]
        return s.image, s.caption


class _CaptionListSource:
    """(path, caption) rows read from a CSV/TSV/JSONL file; images are loaded by the trainer."""

    def __init__(self, name: str, paths: list[str], captions: list[str]) -> None:
        self.name, self._paths, self._captions = name, paths, captions

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> tuple[ImageLike, str]:
        index = _check_index(index, len(self._paths))
        return self._paths[index], self._captions[index]


class _FolderSource:
    """Images in one sub-folder per class; captions from FOLDER_CAPTIONS, picked per (seed, index)."""

    def __init__(self, name: str, classes: tuple[str, ...], items: list[tuple[str, int]], seed: int) -> None:
        self.name, self.classes, self._items, self._seed = name, classes, items, seed

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[ImageLike, str]:
        index = _check_index(index, len(self._items))
        path, label = self._items[index]
        k = int(np.random.default_rng([self._seed, index]).integers(len(FOLDER_CAPTIONS)))
        return path, FOLDER_CAPTIONS[k].format(self.classes[label])


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _read_table(path: Path) -> _CaptionListSource:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet exports start with a BOM
        reader = csv.DictReader(f, delimiter=delimiter)
        found = list(reader.fieldnames or [])
        missing = [c for c in ("filepath", "caption") if c not in found]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(found) or 'none'})",
                fix="the header row must name a 'filepath' and a 'caption' column",
            )
        rows = [(r["filepath"], r["caption"]) for r in reader if r.get("filepath")]
    return _CaptionListSource(str(path), [_resolve(path.parent, p) for p, _ in rows], [c or "" for _, c in rows])


def _read_jsonl(path: Path) -> _CaptionListSource:
    paths, captions = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON: {e.msg}", fix="one JSON object per line") from e
            image = row.get("image", row.get("filepath")) if isinstance(row, dict) else None
            caption = row.get("caption", row.get("text")) if isinstance(row, dict) else None
            if not isinstance(image, str) or not isinstance(caption, str):
                raise DataError(
                    f"{path}:{lineno}: expected 'image' (or 'filepath') and 'caption' (or 'text') strings",
                    fix='write lines like {"image": "img/0001.jpg", "caption": "a photo of a cat"}',
                )
            paths.append(_resolve(path.parent, image))
            captions.append(caption)
    return _CaptionListSource(str(path), paths, captions)


def class_name(folder: str) -> str:
    """Folder name -> class name: 'golden_retriever' and 'golden-retriever' -> 'golden retriever'."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_split_dirs(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def _folder_classes(root: Path) -> tuple[list[str], tuple[str, ...]]:
    """(folder names, class names) of a class-folder tree; with train/ and val/, train/ defines them."""
    base = root / "train" if _has_split_dirs(root) else root
    folders = [p.name for p in _subdirs(base)]
    return folders, tuple(class_name(f) for f in folders)


def _folder_items(root: Path, split: str) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    folders, classes = _folder_classes(root)
    if not folders:
        raise DataError(f"{root} has no class sub-folders", fix="put images in one folder per class: ROOT/cat/1.jpg")
    if _has_split_dirs(root):
        base = root / ("train" if split == "train" else "val")
    elif split == "heldout":
        raise DataError(f"{root} has no held-out split", fix="add train/ and val/ sub-folders, each with class folders")
    else:
        base = root
    known = {f: k for k, f in enumerate(folders)}
    items: list[tuple[str, int]] = []
    for sub in _subdirs(base):
        if sub.name not in known:
            raise DataError(f"{sub}: class '{sub.name}' is not in {root / 'train'}", fix="use the same class folders")
        files = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        items += [(str(p), known[sub.name]) for p in files]
    return classes, items


def open_map_source(spec: str, *, image_size: int, seed: int = 0, split: str = "train") -> MapSource:
    """Open a random-access training source by spec (see the module docstring for the kinds)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    source: MapSource
    if spec.startswith("builtin:"):
        if spec == "builtin:shapes":
            source = _ShapesSource(split, image_size, seed)
        elif spec == "builtin:digits":
            from edgeclip.train.digits import DigitsDataset

            source = DigitsDataset("train" if split == "train" else "heldout", image_size, seed)
        else:
            raise UnknownNameError("built-in dataset", spec, BUILTINS)
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
    try:
        if path.is_dir():
            classes, items = _folder_items(path, split)
            return _FolderSource(str(path), classes, items, seed)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".tsv", ".jsonl"):
            raise DataError(f"unsupported data source '{path}'", fix=_FIX_SPEC)
        if split != "train":
            raise DataError(f"{path} has no held-out split", fix="evaluate on a separate file or a val/ folder")
        return _read_jsonl(path) if suffix == ".jsonl" else _read_table(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read data source {path}: {e}", fix="check that it is readable and UTF-8") from e


def is_webdataset(spec: str) -> bool:
    """True for tar shards: 'x.tar', 'x.tar.gz', 'x.tgz', or a brace pattern like 'shards/{000..099}.tar'."""
    low = spec.lower()
    return low.endswith((".tar", ".tar.gz", ".tgz")) or ("{" in low and ".tar" in low)


def zero_shot_eval_spec(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(class names, prompt templates) of a source's zero-shot evaluation, or None if it has none.

    builtin:shapes has its own two-attribute evaluation elsewhere, so it returns None here.
    """
    if spec == "builtin:digits":
        from edgeclip.train.digits import ZERO_SHOT_CLASSES, ZERO_SHOT_TEMPLATES

        return ZERO_SHOT_CLASSES, ZERO_SHOT_TEMPLATES
    path = Path(spec).expanduser()
    if spec.startswith("builtin:") or not path.is_dir():
        return None
    try:
        _, classes = _folder_classes(path)
    except OSError as e:
        raise DataError(f"cannot read data source {path}: {e}") from e
    return (classes, FOLDER_ZERO_SHOT_TEMPLATES) if classes else None


def heldout_items(spec: str, *, image_size: int, seed: int = 0) -> list[tuple[ImageLike, int]] | None:
    """Held-out (image, target) pairs, targets indexing zero_shot_eval_spec's class names; None if none.

    builtin:digits: its 20 % split (never seen in training with the same seed); a class folder:
    its val/ sub-folder when it has train/ and val/, else None.
    """
    if spec == "builtin:digits":
        from edgeclip.train.digits import DigitsDataset

        held = DigitsDataset("heldout", image_size, seed)
        return [(held[i][0], held.label(i)) for i in range(len(held))]
    path = Path(spec).expanduser()
    if spec.startswith("builtin:") or not path.is_dir() or not _has_split_dirs(path):
        return None
    source = open_map_source(spec, image_size=image_size, seed=seed, split="heldout")
    assert isinstance(source, _FolderSource)
    return list(source._items)


# --- WebDataset shards -------------------------------------------------------------------------

_WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _split_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: 'dir/000123.seg.jpg' -> key 'dir/000123', extension 'seg.jpg'."""
    slash = member_name.rfind("/")
    dot = member_name.find(".", slash + 1)
    if dot < 0:
        return member_name, ""
    return member_name[:dot], member_name[dot + 1 :].lower()


def _is_image(data: bytes) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.verify()  # parses headers/chunks (PNG CRCs) without decoding every pixel
        return True
    except Exception:  # any failure means "PIL cannot open it": PIL raises many unrelated types
        return False


class WebDatasetSource:
    """Tar shards, brace-expanded ('shards/{000..099}.tar'); each sample is an image
    (jpg/jpeg/png/webp) plus a caption (txt, or json with a 'caption'/'text' key). Iterable only.

    Broken samples are skipped and counted in `skipped` (a Counter by reason), never raised:
    one bad sample in a million must not stop a run.
    """

    def __init__(self, urls: str, *, seed: int = 0) -> None:
        braceexpand = require("braceexpand", extra="train", purpose="expanding WebDataset shard patterns")
        self.urls, self.seed = urls, seed
        self.shards: list[str] = [s for part in urls.split("::") for s in braceexpand.braceexpand(part.strip())]
        if not self.shards:
            raise DataError(f"WebDataset '{urls}' is empty", fix="give at least one .tar shard")
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"WebDataset shard not found: {missing[0]}{more}", fix="check the path and brace pattern")
        self.skipped: Counter[str] = Counter()

    def shards_for(self, epoch: int, *, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
                   ) -> list[str]:
        """This (rank, worker)'s shards for an epoch: a seeded shuffle, dealt by node then by worker.

        Across all (rank, worker) pairs every shard appears exactly once per epoch.
        """
        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise ConfigError(f"need 0 <= rank < world_size and 0 <= worker < num_workers, "
                              f"got rank={rank}/{world_size}, worker={worker}/{num_workers}")
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return [self.shards[int(k)] for k in order[rank::world_size][worker::num_workers]]

    def samples(self, epoch: int, *, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
                ) -> Iterator[tuple[bytes, str]]:
        """Yield (raw image bytes, caption) from this (rank, worker)'s shards for `epoch`, in shard order."""
        for shard in self.shards_for(epoch, rank=rank, world_size=world_size, worker=worker, num_workers=num_workers):
            yield from self._read_shard(shard)

    def _read_shard(self, shard: str) -> Iterator[tuple[bytes, str]]:
        key: str | None = None
        files: dict[str, bytes] = {}
        try:
            # streaming mode reads each member once, in order, like a remote pipe would be read
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, ext = _split_key(member.name)
                    if k != key:
                        if key is not None:
                            yield from self._finish(files)
                        key, files = k, {}
                    f = tar.extractfile(member)
                    assert f is not None  # regular files always have data
                    files[ext] = f.read()
                    if len(files[ext]) != member.size:
                        raise tarfile.ReadError("unexpected end of data")
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            # a truncated or corrupt shard: the sample in progress is lost, the rest of the shard too
            self.skipped["truncated"] += 1
            return
        if key is not None:
            yield from self._finish(files)

    def _finish(self, files: dict[str, bytes]) -> Iterator[tuple[bytes, str]]:
        image = next((files[e] for e in _WDS_IMAGE_EXTS if e in files), None)
        if image is None:
            self.skipped["no_image"] += 1
            return
        caption = self._caption(files)
        if caption is None:
            return
        if not _is_image(image):
            self.skipped["undecodable_image"] += 1
            return
        yield image, caption

    def _caption(self, files: dict[str, bytes]) -> str | None:
        if "txt" in files:
            try:
                text = files["txt"].decode("utf-8").strip()
            except UnicodeDecodeError:
                self.skipped["bad_caption"] += 1
                return None
        elif "json" in files:
            try:
                meta = json.loads(files["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.skipped["bad_json"] += 1
                return None
            value = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
            text = value.strip() if isinstance(value, str) else ""
        else:
            text = ""
        if not text:
            self.skipped["no_caption"] += 1
            return None
        return text
