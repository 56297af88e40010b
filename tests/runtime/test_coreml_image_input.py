"""The CoreML backend hands a package with an image input the pixels themselves: a normalised row
(what every backend receives) turned back into the 0..255 RGB levels it came from, whatever rescale
factor the preprocessing records. Runs without coremltools: this is numpy and Pillow only."""

from __future__ import annotations

import numpy as np
import pytest

from edgeclip.bundle import PreprocessConfig
from edgeclip.runtime.backends.coreml import image_from_row
from edgeclip.runtime.preprocess import normalize


@pytest.mark.parametrize("factor", [1 / 255, 1 / 127.5])
def test_a_normalised_row_becomes_the_pixels_it_came_from(factor: float) -> None:
    cfg = PreprocessConfig(image_size=16, rescale_factor=factor)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    row = normalize(pixels, cfg)[None]
    image_input = {"scale": cfg.rescale_factor, "mean": list(cfg.mean), "std": list(cfg.std)}
    image = image_from_row(row, image_input)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), pixels)
