"""The built-in datasets' splits, defined once: every user (the trainer, its zero-shot and retrieval
evaluation, calibration, `bench --eval`, export's validation probes) takes its images from here.

- builtin:shapes: train draws from the training colour x shape combinations with `seed`; held-out
  draws from the held-out combinations with `seed + SHAPES_HELDOUT_SEED_OFFSET`. Items depend only on
  (seed, split, index), so a smaller held-out set is a prefix of a larger one.
- builtin:digits: a seeded, class-stratified 80/20 split of scikit-learn's digits (`digits_split`);
  the held-out split must use the training seed, or it would overlap the digits trained on.
"""

from __future__ import annotations

from edgeclip.data.digits import DigitsDataset
from edgeclip.data.images import ImageLike
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import ConfigError, UnknownNameError

__all__ = ["BUILTINS", "REFERENCE_SEED", "SHAPES_HELDOUT_SEED_OFFSET", "SHAPES_HELDOUT_SIZE", "SHAPES_TRAIN_SIZE",
           "SPLITS", "ShapesSource", "digits_split_of", "open_builtin", "shapes_heldout", "shapes_train"]

BUILTINS: tuple[str, ...] = ("builtin:digits", "builtin:shapes")
SPLITS: tuple[str, ...] = ("train", "heldout")
# Procedural shapes never repeat, so the train split is "as long as any run needs".
SHAPES_TRAIN_SIZE = 1_000_000
SHAPES_HELDOUT_SIZE = 480
# The trainer's zero-shot evaluation has drawn held-out shapes with seed + 1 since the first
# release; keeping it keeps every published held-out figure for a seed reproducible.
SHAPES_HELDOUT_SEED_OFFSET = 1
# The held-out split that users outside a training run (calibration, `bench --eval`, export's
# validation probes) take: that of the default training seed, so they score the images a default
# run was evaluated on.
REFERENCE_SEED = 0


def shapes_train(image_size: int, seed: int, size: int = SHAPES_TRAIN_SIZE) -> ShapesDataset:
    return ShapesDataset("train", size, image_size, seed)


def shapes_heldout(image_size: int, seed: int, size: int = SHAPES_HELDOUT_SIZE) -> ShapesDataset:
    """Held-out colour x shape combinations, never drawn in training with any seed."""
    return ShapesDataset("heldout", size, image_size, seed + SHAPES_HELDOUT_SEED_OFFSET)


def digits_split_of(split: str, image_size: int, seed: int) -> DigitsDataset:
    return DigitsDataset("train" if split == "train" else "heldout", image_size, seed)


class ShapesSource:
    """builtin:shapes as (image, caption) pairs."""

    name = "builtin:shapes"

    def __init__(self, dataset: ShapesDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[ImageLike, str]:
        s = self.dataset[index]
        return s.image, s.caption


def open_builtin(spec: str, split: str, image_size: int, seed: int) -> ShapesSource | DigitsDataset:
    """A built-in dataset's train or held-out split as (image, caption) pairs."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if spec == "builtin:shapes":
        ds = shapes_train(image_size, seed) if split == "train" else shapes_heldout(image_size, seed)
        return ShapesSource(ds)
    if spec == "builtin:digits":
        return digits_split_of(split, image_size, seed)
    raise UnknownNameError("built-in dataset", spec, BUILTINS)
