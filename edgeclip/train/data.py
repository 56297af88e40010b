"""Training data: open a `--data` spec, and the zero-shot evaluation tasks that go with it.

Map-style sources (builtin:shapes, builtin:digits, csv/tsv, jsonl, image folders) live in
`edgeclip.train.sources`; WebDataset shards are streamed (see `loader.StreamDataset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgeclip.errors import DataError
from edgeclip.train.sources import (
    WebDatasetSource,
    heldout_items,
    is_webdataset,
    open_map_source,
    zero_shot_eval_spec,
)


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


def open_source(spec: str, *, image_size: int, seed: int = 0) -> CaptionDataset:
    """Open a map-style training source (procedural ones are effectively endless)."""
    if is_webdataset(spec):
        raise DataError(f"'{spec}' is a WebDataset: it is streamed, not indexed",
                        fix="use it as the only --data source")
    return open_map_source(spec, image_size=image_size, seed=seed, split="train")


def open_stream(spec: str, seed: int) -> WebDatasetSource:
    return WebDatasetSource(spec, seed=seed)


def zero_shot_tasks(spec: str, *, image_size: int, size: int = 480, seed: int = 0) -> list[ZeroShotTask]:
    """The held-out evaluation tasks of a source (images never seen in training), if it has any."""
    if spec == "builtin:shapes":
        return _shapes_tasks(image_size, size, seed)
    if is_webdataset(spec):
        return []
    labels = zero_shot_eval_spec(spec)
    items = heldout_items(spec, image_size=image_size, seed=seed) if labels else None
    if not labels or not items:
        return []
    items = items[:size]
    name = "digits" if spec == "builtin:digits" else "classes"
    return [ZeroShotTask(name, labels[0], labels[1], [im for im, _ in items], [t for _, t in items])]


def _shapes_tasks(image_size: int, size: int, seed: int) -> list[ZeroShotTask]:
    from edgeclip.train.shapes import ZERO_SHOT_TEMPLATES, ShapesDataset, zero_shot_classes

    held = ShapesDataset(split="heldout", size=size, image_size=image_size, seed=seed + 1)
    samples = [held[i] for i in range(len(held))]
    images = [s.image for s in samples]  # one list object: evaluate() embeds it once
    tasks = []
    for attr in ("shape", "colour"):
        classes = zero_shot_classes(attr)
        targets = [classes.index(getattr(s, attr)) for s in samples]
        tasks.append(ZeroShotTask(attr, classes, ZERO_SHOT_TEMPLATES[attr], images, targets))
    return tasks


def retrieval_pairs(spec: str, *, image_size: int, size: int, seed: int) -> tuple[list[Any], list[str]] | None:
    """Held-out (image, caption) pairs for image<->text retrieval, where the source has a split.
    Opened with the training seed: a seeded split (digits, folders) is then the one training left out."""
    try:
        src = open_map_source(spec, image_size=image_size, seed=seed, split="heldout")
    except DataError:
        return None
    n = min(size, len(src))
    pairs = [src[i] for i in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
