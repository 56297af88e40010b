"""Held-out evaluation: the zero-shot tasks of a source and its image<->text retrieval pairs.

Both are taken from the held-out split that `spec` defines for the source, with the training seed,
so they are images the run with that seed never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeclip.data.builtin import shapes_heldout
from edgeclip.data.shapes import ZERO_SHOT_TEMPLATES as SHAPES_TEMPLATES
from edgeclip.data.shapes import zero_shot_classes
from edgeclip.data.shards import is_webdataset
from edgeclip.data.spec import heldout_items, open_map_source, zero_shot_eval_spec
from edgeclip.errors import DataError

__all__ = ["ZeroShotTask", "retrieval_pairs", "shapes_tasks", "zero_shot_tasks"]


@dataclass
class ZeroShotTask:
    """Held-out images with integer targets into `classes`, and the prompt templates to use."""

    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    images: Sequence[Any]
    targets: Sequence[int]


def zero_shot_tasks(spec: str, *, image_size: int, size: int = 480, seed: int = 0) -> list[ZeroShotTask]:
    """The held-out evaluation tasks of a source (images never seen in training), if it has any."""
    if spec == "builtin:shapes":
        return shapes_tasks(image_size, size, seed)
    if is_webdataset(spec):
        return []
    labels = zero_shot_eval_spec(spec)
    items = heldout_items(spec, image_size=image_size, seed=seed) if labels else None
    if not labels or not items:
        return []
    items = items[:size]
    name = "digits" if spec == "builtin:digits" else "classes"
    return [ZeroShotTask(name, labels[0], labels[1], [im for im, _ in items], [t for _, t in items])]


def shapes_tasks(image_size: int, size: int, seed: int, attributes: Sequence[str] = ("shape", "colour")
                 ) -> list[ZeroShotTask]:
    """builtin:shapes' held-out split scored on each attribute (shape, colour)."""
    held = shapes_heldout(image_size, seed, size)
    samples = [held[i] for i in range(len(held))]
    images = [s.image for s in samples]  # one list object: evaluate() embeds it once
    tasks = []
    for attr in attributes:
        classes = zero_shot_classes(attr)
        targets = [classes.index(getattr(s, attr)) for s in samples]
        tasks.append(ZeroShotTask(attr, classes, SHAPES_TEMPLATES[attr], images, targets))
    return tasks


def retrieval_pairs(spec: str, *, image_size: int, size: int, seed: int) -> tuple[list[Any], list[str]] | None:
    """Held-out (image, caption) pairs for image<->text retrieval, where the source has a split."""
    try:
        src = open_map_source(spec, image_size=image_size, seed=seed, split="heldout")
    except DataError:
        return None
    n = min(size, len(src))
    pairs = [src[i] for i in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
