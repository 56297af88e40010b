"""Label embeddings from class names x prompt templates (shared by training eval, export and
on-device `set_labels`, so every path builds the classifier the same way)."""

from __future__ import annotations

from collections import Counter
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
    # a bare string is a sequence too: "cat" would become the classes 'c', 'a', 't'
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ConfigError("class names must be a list of strings", fix="pass one string per class, e.g. ['cat', 'dog']")
    names = [c.strip() for c in classes]
    if not names or any(not c for c in names):
        raise ConfigError("the label list is empty or has blank names", fix="give one class name per line")
    dup = sorted(c for c, n in Counter(names).items() if n > 1)  # Counter: 20k classes in linear time
    if dup:
        raise ConfigError(f"duplicate class names: {dup}", fix="each class name must appear once")
    return names


def prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major list: for each class, every template filled in."""
    if isinstance(templates, str) or not templates or not all(_one_slot(t) for t in templates):
        raise ConfigError("every prompt template must contain '{}' once (and no other braces)",
                          fix="e.g. 'a photo of a {}.'; write a literal brace as '{{' or '}}'")
    return [t.format(c) for c in classes for t in templates]


def _one_slot(template: object) -> bool:
    """Whether str.format fills `template` with one class name ('a {} and {}' or '{name}' would raise)."""
    if not isinstance(template, str) or "{}" not in template:
        return False
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError, AttributeError):
        return False
    return True


PromptProgress = Callable[[int, int], None]  # (prompts encoded so far, total prompts)


def label_embeddings(
    classes: Sequence[str],
    templates: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    batch_size: int = 256,
    progress: PromptProgress | None = None,
) -> np.ndarray:
    """Encode every class x template prompt with `encode` (texts -> [N, D]) and average per class -> [C, D].

    Memory is bounded by one batch plus the [C, D] result, whatever the number of prompts: prompts
    are formatted, encoded and folded into running per-class sums one batch at a time (80k prompts
    held at once would be 80k token rows and 80k embeddings). Interrupting it (Ctrl-C) loses only
    the work: nothing is written anywhere until the caller saves the result.
    """
    names = check_classes(classes)
    tmpl = list(templates)
    prompts(names[:1], tmpl)  # checks the templates before any work
    per_class, total = len(tmpl), len(names) * len(tmpl)
    sums: np.ndarray | None = None
    for start in range(0, total, batch_size):
        index = np.arange(start, min(start + batch_size, total))
        batch = [tmpl[i % per_class].format(names[i // per_class]) for i in index]
        e = np.asarray(encode(batch), dtype=np.float32)
        if sums is None:
            sums = np.zeros((len(names), e.shape[-1]), dtype=np.float32)
        # each prompt counts once, at unit length, towards its class's mean direction
        np.add.at(sums, index // per_class, e / np.linalg.norm(e, axis=-1, keepdims=True))
        if progress is not None:
            progress(int(index[-1]) + 1, total)
    assert sums is not None  # check_classes refuses an empty list
    return (sums / np.linalg.norm(sums, axis=-1, keepdims=True)).astype(np.float32)
