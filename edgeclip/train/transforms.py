"""The trainer's image transforms (torch tensors), built on the runtime's decoding/resizing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgeclip.bundle import PreprocessConfig
from edgeclip.runtime.preprocess import ImageInput, load_image, resize_crop
from edgeclip.train.loader import normalize_batch


def eval_transform(cfg: PreprocessConfig) -> Callable[[ImageInput], torch.Tensor]:
    """Image -> float32 [3, S, S]: decode, resize shortest side, center crop, normalise.

    Decoding and geometry are the runtime's own functions; normalisation is done in torch
    here and in numpy on the device, and a test holds the two equal.
    """
    def transform(src: ImageInput) -> torch.Tensor:
        img = resize_crop(load_image(src), cfg)
        return normalize_batch(torch.from_numpy(np.array(img, dtype=np.uint8))[None], cfg)[0]

    return transform
