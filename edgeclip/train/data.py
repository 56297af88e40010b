"""Training data sources and zero-shot evaluation tasks.

A source is any map-style dataset of (image, caption) pairs where the image is anything
`edgeclip.runtime.preprocess.load_image` accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgeclip.errors import DataError, UnknownNameError


class CaptionDataset(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[Any, str]: ...


@dataclass
class ZeroShotTask:
    """Held-out images with integer targets into `classes`, and the prompt templates to use."""

    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    images: Sequence[Any]
    targets: Sequence[int]


class _Shapes:
    def __init__(self, split: str, size: int, image_size: int, seed: int) -> None:
        from edgeclip.train.shapes import ShapesDataset

        self._ds = ShapesDataset(split=split, size=size, image_size=image_size, seed=seed)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        s = self._ds[index]
        return s.image, s.caption


BUILTIN = ("builtin:shapes",)


def open_source(spec: str, *, size: int, image_size: int, seed: int = 0) -> CaptionDataset:
    """Open a training source by spec; `size` bounds procedural sources."""
    if spec == "builtin:shapes":
        return _Shapes("train", size, image_size, seed)
    if spec.startswith("builtin:"):
        raise UnknownNameError("built-in dataset", spec, BUILTIN)
    raise DataError(f"unsupported data source '{spec}'", fix=f"use one of: {', '.join(BUILTIN)}")


def zero_shot_tasks(spec: str, *, image_size: int, size: int = 480, seed: int = 0) -> list[ZeroShotTask]:
    """The held-out evaluation tasks of a built-in source (images never seen in training)."""
    if spec != "builtin:shapes":
        return []
    from edgeclip.train.shapes import ZERO_SHOT_TEMPLATES, ShapesDataset, zero_shot_classes

    held = ShapesDataset(split="heldout", size=size, image_size=image_size, seed=seed + 1)
    samples = [held[i] for i in range(len(held))]
    images = [s.image for s in samples]  # one list object: evaluate() embeds it once
    tasks = []
    for attr in ("shape", "colour"):
        classes = zero_shot_classes(attr)
        targets = [classes.index(getattr(s, attr)) for s in samples]
        tasks.append(
            ZeroShotTask(attr, classes, ZERO_SHOT_TEMPLATES[attr], images, targets)
        )
    return tasks
