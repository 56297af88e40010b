"""Inputs of a type the runtime does not take (bytearray, memoryview, None, an int, a list) are an
ImageError like any undecodable image, never an AttributeError: in a batch such an input fails
alone instead of taking the whole call down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.errors import ImageError
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.preprocess import load_image

PNG_HEADER = b"\x89PNG\r\n\x1a\n"
ODD: list[Any] = [bytearray(PNG_HEADER), memoryview(PNG_HEADER), None, 123, ["a.png"], 4.5]


@pytest.mark.parametrize("src", ODD, ids=lambda s: type(s).__name__)
def test_an_unsupported_input_type_is_an_image_error(src: Any) -> None:
    with pytest.raises(ImageError) as e:
        load_image(src)
    assert e.value.fix and "bytes" in e.value.fix


def test_in_a_batch_an_unsupported_input_fails_alone(tiny_bundle: Path) -> None:
    clf = ZeroShotClassifier.load(tiny_bundle, threads=1)
    good = np.full((32, 32, 3), 80, dtype=np.uint8)
    results = clf.classify([good, None, good, bytearray(PNG_HEADER)], top_k=1)  # type: ignore[list-item]
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[0].predictions == results[2].predictions and "not an image input" in (results[1].error or "")
