"""The zero-shot evaluation set of `edgeclip bench --eval`, and the label embeddings it is scored with.

Targets are indices into the eval source's own class list; label embeddings are always looked up by
class name, never by position, because a bundle's label set may list the same classes in any order.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.bundle import Bundle
from edgeclip.data.builtin import REFERENCE_SEED
from edgeclip.data.folders import has_split_dirs, open_class_folder
from edgeclip.data.tasks import shapes_tasks
from edgeclip.errors import ConfigError, DataError, ImageError
from edgeclip.runtime.labels import DEFAULT_TEMPLATES
from edgeclip.runtime.preprocess import preprocess


@dataclass(frozen=True)
class EvalImages:
    """The labelled images `bench --eval` scores (not the trainer's EvalSet)."""

    source: str
    classes: list[str]
    templates: list[str]  # used when labels are encoded with the text tower of this run
    pixels: np.ndarray  # [N, 3, S, S] float32, preprocessed as the runtime does
    targets: np.ndarray  # [N] indices into `classes`


def load_eval_set(source: str, bundle: Bundle, size: int) -> EvalImages:
    """builtin:shapes' held-out split (as the trainer evaluates it with the default seed), or a
    class folder read like a training source: its val/ split when it has train/ and val/, else all of it."""
    pre = bundle.manifest.preprocess
    if source == "builtin:shapes":
        task = shapes_tasks(pre.image_size, size, seed=REFERENCE_SEED, attributes=("shape",))[0]
        pixels = np.stack([preprocess(im, pre) for im in task.images])
        return EvalImages(source, list(task.classes), list(task.templates), pixels, np.array(task.targets))
    root = Path(source)
    if not root.is_dir():
        raise ConfigError(f"--eval {source}: not builtin:shapes or an image folder",
                          fix="pass builtin:shapes or a folder with one sub-folder of images per class")
    try:
        folder = open_class_folder(root, "heldout" if has_split_dirs(root) else "train")
    except DataError as e:
        raise ConfigError(f"--eval {root}: {e.message}", fix=e.fix) from e
    if not folder.items:
        raise ConfigError(f"--eval {root}: no images in class sub-folders",
                          fix="put the images of each class in a sub-folder named after the class")
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for f, i in folder.items[:size]:
        try:
            arrays.append(preprocess(f, pre))
            labels.append(i)
        except ImageError:  # unreadable files are skipped; eval_images in the report shows the count
            continue
    if not arrays:
        raise ConfigError(f"--eval {root}: none of the images could be read")
    return EvalImages(source, list(folder.classes), list(DEFAULT_TEMPLATES), np.stack(arrays), np.array(labels))


def bundle_label_rows(bundle: Bundle, evalset: EvalImages) -> tuple[np.ndarray, str]:
    """([len(evalset.classes), D] label embeddings in the eval source's class order, label-set name).

    Uses "default" when it holds every eval class, else the first label set that does. Classes are
    matched by exact name, so a label set in any order scores the same.
    """
    names = sorted(bundle.manifest.labels, key=lambda n: n != "default")
    if not names:
        raise ConfigError(
            f"--eval {evalset.source}: the bundle has no label set to score the image encoder with",
            fix="add one with `edgeclip labels BUNDLE --classes classes.txt --name default`, "
                "or bench the text encoder too (--encoders image,text)",
        )
    best: tuple[list[str], str, list[str]] | None = None
    for name in names:
        emb, meta = bundle.label_set(name)
        index = {c: i for i, c in enumerate(meta["classes"])}
        missing = [c for c in evalset.classes if c not in index]
        if not missing:
            return emb[[index[c] for c in evalset.classes]], name
        if best is None or len(missing) < len(best[0]):
            best = (missing, name, list(meta["classes"]))
    assert best is not None
    missing, name, known = best
    hints = []
    for m in missing[:5]:
        close = difflib.get_close_matches(m, known, n=1)
        hints.append(f"'{m}' (the label set has '{close[0]}')" if close else f"'{m}'")
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise ConfigError(
        f"--eval {evalset.source}: eval classes not in the bundle's label set '{name}': "
        f"{', '.join(hints)}{more}; classes are matched by name",
        fix="add a label set with these class names (`edgeclip labels BUNDLE --classes classes.txt --name NAME`), "
            "rename the class folders to match, or bench the text encoder too (--encoders image,text)",
    )
