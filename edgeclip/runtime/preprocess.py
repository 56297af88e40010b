"""Image decoding and preprocessing in numpy/PIL: the one definition of the eval transform.

The trainer's eval transform, calibration and the device runtime all call `load_image` and
`resize_crop` from here, so pixels reach every encoder the same way.

Two decode paths. "exact" is the training transform, bit for bit. "fast" changes only images whose
shortest side is at least twice the model's input: a JPEG is decoded at reduced size in the DCT
domain, then reduced by an integer factor, and only the region the crop keeps is resampled; the
result stays at least twice the output size before the final bicubic/bilinear resample (Pillow's
own `thumbnail` recipe). Its drift from "exact" is measured by benchmarks/preprocess_drift.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeclip.bundle import DECODES, PreprocessConfig, TensorSpec
from edgeclip.errors import ConfigError, ImageError

ImageInput = Union[str, os.PathLike[str], bytes, IO[bytes], Image.Image, np.ndarray]

# PIL's own default; larger images are refused before their pixels are decoded
MAX_PIXELS = 89_478_485
# beyond this aspect ratio the resized-but-uncropped image is not materialised (see resize_crop)
_MAX_ASPECT = 16
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# the fast path changes images from FAST_GAP x the model's input up, and its integer reduce leaves
# at least FAST_GAP x the output size for the final resample (Pillow's `thumbnail` recipe)
FAST_GAP = 2
# the DCT-domain decode keeps the shortest side >= DRAFT_GAP x the input. 1 lets a 1280x720 frame
# decode at half size for a 224-px model; benchmarks/results/preprocess_drift.json measures 1 and 2,
# and both meet the bound there
DRAFT_GAP = 1
# what new exports are validated with and record (PreprocessConfig.decode); a bundle's record is
# the runtime's default. Chosen because the drift measured in
# benchmarks/results/preprocess_drift.json meets the bound stated there.
DEFAULT_DECODE = "fast"


def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, bytes):
        return f"<{len(src)} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {src.dtype}{list(src.shape)}>"
    return f"<{type(src).__name__}>"


def load_image(src: ImageInput, max_pixels: int = MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Decode any supported input to an RGB PIL image, EXIF orientation applied.

    `draft`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (both axes alike) as long as its
    shortest side stays >= `draft` pixels; other formats ignore it. The pixel limit applies to the
    size the file declares, before anything is decoded.
    Raises ImageError (never anything else) for an input that cannot be used.
    """
    return _load(src, max_pixels, draft)[0]


def _load(src: ImageInput, max_pixels: int, draft: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """`load_image`, and the size the input declares (before a reduced-size decode)."""
    name = _describe(src)
    try:
        if isinstance(src, Image.Image):
            return _decode(src, name, max_pixels, None), src.size  # already decoded, or the caller's to draft
        if isinstance(src, np.ndarray):
            img = _from_array(src, name)
            return img, img.size
        if not isinstance(src, (str, os.PathLike, bytes)) and not hasattr(src, "read"):
            # (bytearray, None, a list...): PIL would fail with an AttributeError, which a batch does not isolate
            raise ImageError(f"{name}: not an image input",
                             fix="pass a path, bytes, a binary file object, a PIL image or a uint8 HxWx3 RGB array")
        if isinstance(src, (str, os.PathLike)) and not Path(src).is_file():
            raise ImageError(f"image not found: {name}")
        fp = io.BytesIO(src) if isinstance(src, bytes) else src
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(fp)
        with opened:  # the decoded copy outlives the file handle
            declared = opened.size  # draft() changes it
            return _decode(opened, name, max_pixels, draft), declared
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a decompression bomb: {e}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, TypeError) as e:
        raise ImageError(f"{name}: cannot decode image: {e}", fix="pass a readable JPEG/PNG/WebP/... file") from e


def _decode(img: Image.Image, name: str, max_pixels: int, draft: int | None) -> Image.Image:
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: the image is empty ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} exceeds the {max_pixels}-pixel limit (decompression bomb?)")
    img.seek(0)  # first frame of an animation
    if draft is not None and min(w, h) >= 2 * draft:  # below that no DCT scale applies
        # Pillow picks the largest DCT scale with both sides >= the request; the scale is the same
        # on both axes, so EXIF orientation (applied after) is unaffected
        img.draft(None, (draft, draft))
    img = ImageOps.exif_transpose(img) or img  # a transposed (or plain) copy, fully loaded
    return to_rgb(img)


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ImageError(f"{name}: an array input must be uint8 HxWx3 RGB")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white, 16-bit/float rescaled."""
    mode = img.mode
    if mode == "RGB":
        img.load()
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            finite = arr[np.isfinite(arr)]  # an all-NaN image has no maximum (and must not warn)
            scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        else:  # 16-bit (or 32-bit integer holding 16-bit data): 65535 -> 255
            scale = 1.0 / 257.0 if arr.size and arr.max() > 255 else 1.0
        arr = np.nan_to_num(arr * scale, nan=0.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def _shortest_geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """"shortest" + "center": (resized width, height, crop left, top)."""
    # the long side is floored, as in transformers' CLIPImageProcessor and torchvision's Resize
    nw, nh = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def _crop_box(w: int, h: int, size: int) -> tuple[float, float, float, float]:
    """The source region that "shortest" + "center" keeps, in source pixels."""
    nw, nh, left, top = _shortest_geometry(w, h, size)
    sx, sy = w / nw, h / nh
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def _check_mode(cfg: PreprocessConfig) -> None:
    if (cfg.resize, cfg.crop) not in (("shortest", "center"), ("squash", "none")):
        raise ConfigError(f"unsupported preprocess resize={cfg.resize!r} crop={cfg.crop!r}")


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """"shortest": resize the shortest side to image_size (keeping aspect), then center-crop a
    square. "squash": resize to image_size x image_size, aspect not kept, nothing cropped."""
    _check_mode(cfg)
    size = cfg.image_size
    if cfg.resize == "squash":
        return img if img.size == (size, size) else img.resize((size, size), _RESAMPLE[cfg.interpolation])
    w, h = img.size
    if (w, h) != (size, size):
        nw, nh, left, top = _shortest_geometry(w, h, size)
        if nw * nh > _MAX_ASPECT * size * size:
            # a 20000x1 strip would be resized to gigabytes before the crop: resample only the
            # source region the crop keeps (equal to resize-then-crop within 1-2 levels)
            return img.resize((size, size), _RESAMPLE[cfg.interpolation], box=_crop_box(w, h, size))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _RESAMPLE[cfg.interpolation])
        img = img.crop((left, top, left + size, top + size))
    return img


def uses_fast_path(width: int, height: int, cfg: PreprocessConfig) -> bool:
    """Whether the fast path may change an image of this (declared) size: only from FAST_GAP x the
    model's input up; anything smaller goes the exact way."""
    return min(width, height) >= FAST_GAP * cfg.image_size


def resize_crop_fast(img: Image.Image, cfg: PreprocessConfig, declared: tuple[int, int] | None = None,
                     split: bool = False) -> Image.Image:
    """The fast path's resize: `resize_crop`'s geometry, but only the kept region is resampled, after
    an integer reduce that leaves >= FAST_GAP x the output size. Images whose `declared` size (the
    file's, before a reduced-size decode; default: `img`'s own) is smaller: `resize_crop`.
    `split`: resample the upper and lower halves of the output on two threads at once (see
    `_resample_halves`); for one image's latency, when nothing else wants the cores."""
    _check_mode(cfg)
    w, h = img.size
    if not uses_fast_path(*(declared or img.size), cfg):
        return resize_crop(img, cfg)
    size = cfg.image_size
    box = _crop_box(w, h, size) if cfg.resize == "shortest" else (0.0, 0.0, float(w), float(h))
    resample = _RESAMPLE[cfg.interpolation]
    # Pillow reduces by an integer factor first once the box is >= 2 x FAST_GAP x the output; the
    # halves' boxes would align that reduction differently, so such images resample in one pass
    no_reduce = max(box[2] - box[0], box[3] - box[1]) < 2 * FAST_GAP * size
    if no_reduce and size >= 2:
        if split and (os.cpu_count() or 1) > 1:
            return _resample_halves(img, size, resample, box)
        # the same two calls in turn: Pillow (13+) picks each call's pass order by its own shape, so
        # one whole call can round differently from the halves (5 levels on a square JPEG), and an
        # image alone (split) must give the pixels it gives inside a batch
        return _halves(img, size, resample, box)
    return img.resize((size, size), resample, box=box, reducing_gap=FAST_GAP)


_halves_pool: ThreadPoolExecutor | None = None
_halves_lock = threading.Lock()


def _forget_halves_pool() -> None:
    """In a forked child the pool's thread does not exist (a task sent to it would never run)."""
    global _halves_pool, _halves_lock
    _halves_pool, _halves_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_halves_pool)


def _resample_halves(img: Image.Image, size: int, resample: Image.Resampling,
                     box: tuple[float, float, float, float]) -> Image.Image:
    """`_halves` with the upper half on a second thread (Pillow releases the GIL while it resamples):
    0.3 ms sooner for a 1280x720 frame (benchmarks/results/e2e_floor.json), the same pixels."""
    global _halves_pool
    with _halves_lock:
        if _halves_pool is None:
            _halves_pool = ThreadPoolExecutor(1, "edgeclip-resample")
        pool = _halves_pool
    return _halves(img, size, resample, box, pool)


def _halves(img: Image.Image, size: int, resample: Image.Resampling, box: tuple[float, float, float, float],
            pool: ThreadPoolExecutor | None = None) -> Image.Image:
    """`img.resize((size, size), resample, box=box)` as two calls, one per half of the output rows
    (the upper one on `pool` if given). Each output row reads the source rows its own kernel covers,
    so this is the one-call result up to rounding (bit-equal on a 1280x720 or 4032x3024 JPEG at 224
    px), and the same with or without a pool."""
    left, top, right, bottom = box
    rows = size // 2
    mid = top + (bottom - top) * rows / size  # where the lower half's rows start, in source pixels
    upper_args = ((size, rows), resample, (left, top, right, mid))
    upper: Future[Image.Image] | None = None
    if pool is not None:
        with contextlib.suppress(RuntimeError):  # the interpreter is shutting down (an atexit hook)
            upper = pool.submit(img.resize, *upper_args)
    lower = img.resize((size, size - rows), resample, (left, mid, right, bottom))
    out = Image.new(img.mode, (size, size))
    out.paste(upper.result() if upper is not None else img.resize(*upper_args), (0, 0))
    out.paste(lower, (0, rows))
    return out


def normalize(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W], scaled to [0, 1] then (x - mean) / std."""
    # channel-first from the start and in place: one float buffer instead of four (this is
    # most of the end-to-end overhead at batch 1); the arithmetic, and so every bit, is unchanged
    x = np.empty((3, rgb.shape[0], rgb.shape[1]), dtype=np.float32)
    x[...] = rgb.transpose(2, 0, 1)
    x /= np.float32(1.0 / cfg.rescale_factor)  # 255 exactly for the default 1 / 255
    x -= np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
    x /= np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)
    return x


def model_input(batch_u8: np.ndarray, cfg: PreprocessConfig, spec: TensorSpec) -> np.ndarray:
    """uint8 [N, S, S, 3] -> what the artifact's input `spec` takes: float32 [N, 3, S, S],
    normalised exactly as `normalize` does (the same float32 operations, so the same bits), or the
    uint8 pixels themselves for an artifact that normalises inside its graph (layout NHWC)."""
    if spec.dtype == "uint8" and spec.layout == "NHWC":
        return np.ascontiguousarray(batch_u8, dtype=np.uint8)
    if spec.dtype != "float32" or cfg.layout != "NCHW":
        raise ConfigError(f"input {spec.name!r} wants {spec.dtype} {cfg.layout}; this runtime feeds float32 NCHW",
                          fix="upgrade edgeclip, or re-export the bundle with this version")
    x = np.empty((batch_u8.shape[0], 3, batch_u8.shape[1], batch_u8.shape[2]), dtype=np.float32)
    x[...] = batch_u8.transpose(0, 3, 1, 2)
    x /= np.float32(1.0 / cfg.rescale_factor)
    x -= np.asarray(cfg.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    x /= np.asarray(cfg.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return x


def decode_resize(src: ImageInput, cfg: PreprocessConfig, decode: str = "exact", split: bool = False) -> np.ndarray:
    """One image -> uint8 [S, S, 3], decoded and resized the `decode` way ("exact" or "fast");
    `split`: the fast path's resample runs on two threads (resize_crop_fast)."""
    if decode not in DECODES:
        raise ConfigError(f"unknown decode path {decode!r}", fix=f"use one of {', '.join(DECODES)}")
    if decode == "exact":
        img = resize_crop(load_image(src), cfg)
    else:
        # the fast path's choice goes by the size the file declares: a 1280x720 frame decoded at
        # 640x360 for a 224-px model still resamples only the cropped region, not the whole frame
        # (preprocessing above libjpeg's floor 2.16 -> 1.51 ms, benchmarks/results/e2e_floor.json)
        img, declared = _load(src, MAX_PIXELS, DRAFT_GAP * cfg.image_size)
        img = resize_crop_fast(img, cfg, declared, split)
    return np.asarray(img, dtype=np.uint8)


def preprocess(src: ImageInput, cfg: PreprocessConfig, decode: str = "exact") -> np.ndarray:
    """One image -> float32 [3, S, S]."""
    return normalize(decode_resize(src, cfg, decode), cfg)
