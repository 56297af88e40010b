"""Image folders: a plain folder of images (searched recursively), and class folders, one
sub-folder per class with an optional train/ + val/ split (val/ is the held-out split).

Class names come from folder names the same way for training, zero-shot evaluation and
`bench --eval`: 'golden_retriever' and 'golden-retriever' are the class 'golden retriever'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.data.images import ImageLike, item_index, list_images
from edgeclip.errors import DataError

__all__ = ["FOLDER_CAPTIONS", "FOLDER_ZERO_SHOT_TEMPLATES", "ClassFolder", "FolderSource", "class_name",
           "has_split_dirs", "open_class_folder"]

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


def class_name(folder: str) -> str:
    """Folder name -> class name: 'golden_retriever' and 'golden-retriever' -> 'golden retriever'."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def has_split_dirs(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def folder_classes(root: Path) -> tuple[list[str], tuple[str, ...]]:
    """(folder names, class names) of a class-folder tree; with train/ and val/, train/ defines them."""
    base = root / "train" if has_split_dirs(root) else root
    folders = [p.name for p in _subdirs(base)]
    return folders, tuple(class_name(f) for f in folders)


@dataclass(frozen=True)
class ClassFolder:
    """One split of a class-folder tree: image paths with integer labels into `classes`."""

    classes: tuple[str, ...]
    items: list[tuple[str, int]]


def open_class_folder(root: Path, split: str) -> ClassFolder:
    """The "train" split (train/, or the whole tree) or the "heldout" split (val/) of a class folder."""
    folders, classes = folder_classes(root)
    if not folders:
        raise DataError(f"{root} has no class sub-folders", fix="put images in one folder per class: ROOT/cat/1.jpg")
    if has_split_dirs(root):
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
        items += [(str(p), known[sub.name]) for p in list_images(sub)]
    return ClassFolder(classes, items)


class FolderSource:
    """A class folder as (image path, caption); the caption is a FOLDER_CAPTIONS template picked
    per (seed, index), so item i is the same in every run with that seed."""

    def __init__(self, name: str, folder: ClassFolder, seed: int) -> None:
        self.name, self.classes, self._items, self._seed = name, folder.classes, folder.items, seed

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[ImageLike, str]:
        index = item_index(index, len(self._items))
        path, label = self._items[index]
        k = int(np.random.default_rng([self._seed, index]).integers(len(FOLDER_CAPTIONS)))
        return path, FOLDER_CAPTIONS[k].format(self.classes[label])

    def labelled(self) -> list[tuple[ImageLike, int]]:
        return list(self._items)
