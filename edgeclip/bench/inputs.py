"""The JPEG files bench decodes in its end-to-end rows, made from the built-in data (no downloads)."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from edgeclip.bundle import PreprocessConfig
from edgeclip.data.builtin import REFERENCE_SEED, shapes_heldout
from edgeclip.errors import ConfigError

# camera frames (720p video) and phone photos (12 MP, 4:3): the sizes issue 18 measures end to end
CAMERA_SIZES: tuple[tuple[int, int], ...] = ((1280, 720), (4032, 3024))
SENSOR_NOISE = 4.0  # grey levels (std): photo-like grain, so the JPEG costs what a photo's does to decode


def parse_sizes(value: str) -> list[tuple[int, int]]:
    """'1280x720,4032x3024' -> [(1280, 720), (4032, 3024)]; '' -> []."""
    out = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        w, _, h = part.lower().partition("x")
        if not (w.isdigit() and h.isdigit()) or int(w) < 8 or int(h) < 8:
            raise ConfigError(f"bad camera size {part!r}", fix="use WIDTHxHEIGHT, e.g. 1280x720,4032x3024")
        out.append((int(w), int(h)))
    return out


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def model_size_jpegs(image_size: int, n: int) -> list[bytes]:
    """n JPEGs of 2x the model's input size (smooth random colour fields, as bench has always used)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        out.append(encode_jpeg(Image.fromarray(arr).resize((image_size * 2, image_size * 2), Image.Resampling.BICUBIC)))
    return out


@functools.lru_cache(maxsize=4)
def camera_jpeg(width: int, height: int, index: int = 0) -> bytes:
    """A width x height JPEG: a built-in held-out shapes scene (rendered at up to 512 px), scaled to
    fill the frame, centre-cropped, with sensor grain (a flat upscale would decode faster than a photo)."""
    side = min(width, height)
    scene = shapes_heldout(min(side, 512), REFERENCE_SEED, size=index + 1)[index].image
    scale = max(width, height) / scene.width
    big = scene.resize((round(scene.width * scale), round(scene.height * scale)), Image.Resampling.BICUBIC)
    left, top = (big.width - width) // 2, (big.height - height) // 2
    frame = np.asarray(big.crop((left, top, left + width, top + height)), dtype=np.int16)
    grain = (np.random.default_rng(index).standard_normal(frame.shape[:2], dtype=np.float32) * SENSOR_NOISE)
    frame += grain.astype(np.int16)[:, :, None]
    return encode_jpeg(Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), "RGB"))


def uint8_feed(run: Callable[[np.ndarray], np.ndarray], pre: PreprocessConfig) -> Callable[[np.ndarray], np.ndarray]:
    """`run` of an artifact that normalises inside its graph (uint8 [N, S, S, 3] input), fed the bench's
    float probes: every probe value is (p * rescale - mean) / std of an integer pixel p, so rounding the
    inverse gives back exactly the pixels it came from. Done once per probe array, outside the timed call."""
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(1, 3, 1, 1)
    cache: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def fed(x: np.ndarray) -> np.ndarray:
        if x.dtype == np.uint8:
            return run(x)
        key = (x.__array_interface__["data"][0], x.shape)
        if key not in cache:
            pixels = np.rint((x * std + mean) / np.float32(pre.rescale_factor))
            cache[key] = np.ascontiguousarray(np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))
        return run(cache[key])

    return fed
