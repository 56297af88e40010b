"""Camera-size JPEGs for the end-to-end rows (issue 18 item 1), made from the built-in data."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edgeclip.bench.inputs import CAMERA_SIZES, camera_jpeg, parse_sizes
from edgeclip.errors import ConfigError


@pytest.mark.parametrize(("width", "height"), CAMERA_SIZES)
def test_camera_jpegs_have_the_size_and_grain_of_a_camera_frame(width: int, height: int) -> None:
    data = camera_jpeg(width, height)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (width, height) and img.mode == "RGB"
    pixels = np.asarray(img, dtype=np.float32)
    # sensor grain: neighbouring pixels differ (a plain upscale would be smooth and decode faster)
    assert np.abs(np.diff(pixels[:, :, 1], axis=1)).mean() > 1.0
    assert len(data) > width * height * 0.1  # bytes per pixel of a photo at quality 90, not of a flat image


def test_sizes_option() -> None:
    assert parse_sizes("1280x720, 4032X3024") == [(1280, 720), (4032, 3024)]
    assert parse_sizes("") == []
    with pytest.raises(ConfigError, match="bad camera size"):
        parse_sizes("1280*720")
