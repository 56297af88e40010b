"""The built-in shapes data: deterministic, held-out combinations, zero-shot tasks; unknown sources."""

from __future__ import annotations

import numpy as np
import pytest

from edgeclip.data.shapes import COLOURS, HELDOUT_COMBOS, SHAPES, ZERO_SHOT_TEMPLATES, ShapesDataset
from edgeclip.data.spec import open_source
from edgeclip.data.tasks import zero_shot_tasks
from edgeclip.errors import DataError, UnknownNameError


def test_shapes_is_deterministic_and_holds_out_combinations() -> None:
    a, b = ShapesDataset("train", 200, 64, seed=3), ShapesDataset("train", 200, 64, seed=3)
    for i in (0, 17, 199):
        assert a[i].caption == b[i].caption
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
    train_combos = {(a[i].colour, a[i].shape) for i in range(len(a))}
    assert HELDOUT_COMBOS and len(HELDOUT_COMBOS) < len(COLOURS) * len(SHAPES)  # some, not all, held out
    assert not train_combos & HELDOUT_COMBOS
    assert {c for c, _ in train_combos} == set(COLOURS) and {s for _, s in train_combos} == set(SHAPES)
    held = ShapesDataset("heldout", 50, 64)
    assert {(held[i].colour, held[i].shape) for i in range(50)} <= HELDOUT_COMBOS
    assert a[0].image.size == (64, 64) and a[0].image.mode == "RGB"
    with pytest.raises(IndexError):
        a[200]


def test_zero_shot_templates_differ_from_training_captions() -> None:
    captions = {ShapesDataset("train", 300, 32)[i].caption for i in range(300)}
    prompts = {t.format(c) for attr in ("shape", "colour") for t in ZERO_SHOT_TEMPLATES[attr]
               for c in (SHAPES if attr == "shape" else COLOURS)}
    assert not captions & prompts
    assert len(captions) > 50  # varied wording


def test_zero_shot_tasks_cover_both_attributes() -> None:
    tasks = zero_shot_tasks("builtin:shapes", image_size=32, size=24)
    assert [t.name for t in tasks] == ["shape", "colour"]
    assert all(len(t.images) == len(t.targets) == 24 for t in tasks)


def test_unknown_and_empty_sources() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'builtin:shapes'"):
        open_source("builtin:shape", image_size=32)
    with pytest.raises(DataError):
        open_source("/no/such/data.csv", image_size=32)
