"""Label embeddings from class names x prompt templates (shared by training eval, export and
on-device `set_labels`, so every path builds the classifier the same way)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeclip.errors import ConfigError

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


@dataclass(frozen=True)
class Labels:
    """A label set in memory, as a classifier ranks it (its manifest entry is `bundle.LabelSet`)."""

    name: str
    classes: list[str]
    embeddings: np.ndarray  # [C, D] float32, L2-normalised
    templates: list[str] = field(default_factory=list)


def check_classes(classes: Sequence[str]) -> list[str]:
    names = [c.strip() for c in classes]
    if not names or any(not c for c in names):
        raise ConfigError("the label list is empty or has blank names", fix="give one class name per line")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ConfigError(f"duplicate class names: {dup}", fix="each class name must appear once")
    return names


def prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major list: for each class, every template filled in."""
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError("every prompt template must contain '{}'", fix="e.g. 'a photo of a {}.'")
    return [t.format(c) for c in classes for t in templates]


def average_per_class(text_embeds: np.ndarray, num_classes: int) -> np.ndarray:
    """[C*T, D] class-major embeddings -> [C, D]: normalise, mean over templates, renormalise."""
    e = text_embeds.astype(np.float32).reshape(num_classes, -1, text_embeds.shape[-1])
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    m = e.mean(axis=1)
    return (m / np.linalg.norm(m, axis=-1, keepdims=True)).astype(np.float32)


def label_embeddings(
    classes: Sequence[str],
    templates: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    batch_size: int = 256,
) -> np.ndarray:
    """Encode every prompt with `encode` (texts -> [N, D]) and average per class -> [C, D]."""
    names = check_classes(classes)
    texts = prompts(names, templates)
    parts = [np.asarray(encode(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
    return average_per_class(np.concatenate(parts), len(names))
