"""The two decode paths on real camera-size JPEGs: "exact" is the old training transform bit for bit;
"fast" really decodes at reduced size, keeps EXIF orientation and the pixel limit, and stays close."""

from __future__ import annotations

import io
import os
import signal
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from edgeclip.bundle import PreprocessConfig, TensorSpec
from edgeclip.errors import ConfigError, ImageError
from edgeclip.runtime.preprocess import (
    DRAFT_GAP,
    _resample_halves,
    decode_resize,
    load_image,
    model_input,
    normalize,
    preprocess,
    resize_crop_fast,
)

ORIENTATION = 0x0112


def photo(w: int, h: int, name: str = "china.jpg") -> Image.Image:
    import sklearn.datasets

    return Image.fromarray(sklearn.datasets.load_sample_image(name)).resize((w, h), Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def camera() -> dict[str, bytes]:
    return {"720p": jpeg(photo(1280, 720)), "12mp": jpeg(photo(4032, 3024, "flower.jpg"))}


def old_transform(data: bytes, cfg: PreprocessConfig) -> np.ndarray:
    """The transform as training has always defined it, written out from its description: EXIF
    orientation, RGB, shortest side to S (long side floored) bicubic, center crop, /255, -mean, /std."""
    with Image.open(io.BytesIO(data)) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    s, (w, h) = cfg.image_size, img.size
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - s) // 2, (nh - s) // 2
    x = np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return x.transpose(2, 0, 1)


@pytest.mark.parametrize("size", [64, 224])
def test_exact_path_is_the_old_transform_bit_for_bit(camera: dict[str, bytes], size: int) -> None:
    cfg = PreprocessConfig(image_size=size)
    for data in camera.values():
        ref = old_transform(data, cfg)
        np.testing.assert_array_equal(preprocess(data, cfg), ref)
        np.testing.assert_array_equal(preprocess(data, cfg, "exact"), ref)
        batch = np.stack([decode_resize(data, cfg, "exact")] * 2)
        spec = TensorSpec("pixel_values", "float32", ("batch_size", 3, size, size))
        np.testing.assert_array_equal(model_input(batch, cfg, spec), np.stack([ref, ref]))


def test_fast_path_decodes_a_large_jpeg_at_reduced_size(camera: dict[str, bytes]) -> None:
    cfg = PreprocessConfig(image_size=224)
    data = camera["12mp"]
    with Image.open(io.BytesIO(data)) as im:
        full = im.convert("RGB")
    with Image.open(io.BytesIO(data)) as im:
        im.draft(None, (DRAFT_GAP * 224, DRAFT_GAP * 224))  # libjpeg's DCT scaling, as documented
        drafted = im.convert("RGB")
    assert full.size == (4032, 3024) and drafted.size[0] < 4032 and min(drafted.size) >= 224
    fast = decode_resize(data, cfg, "fast")
    # the fast result is what the reduced-size decode gives, not what a full-size decode gives
    np.testing.assert_array_equal(fast, np.asarray(resize_crop_fast(drafted, cfg, declared=full.size)))
    assert not np.array_equal(fast, np.asarray(resize_crop_fast(full, cfg)))
    # and it shows the same picture as the exact path (crop placement, colours)
    diff = np.abs(fast.astype(np.int16) - decode_resize(data, cfg, "exact").astype(np.int16))
    assert diff.mean() < 2.0 and not np.array_equal(fast, decode_resize(data, cfg, "exact"))


def test_a_frame_decoded_at_half_size_resamples_only_the_region_the_crop_keeps(camera: dict[str, bytes]) -> None:
    # 1280x720 for a 224-px model decodes at 640x360: below 2 x 224, but the file qualified, so the
    # fast path still resamples just the centre square instead of the whole frame and then cropping
    cfg = PreprocessConfig(image_size=224)
    with Image.open(io.BytesIO(camera["720p"])) as im:
        im.draft(None, (224, 224))
        drafted = im.convert("RGB")
    assert drafted.size == (640, 360)
    nw = int(224 * 640 / 360)  # shortest side to 224, long side floored: 398
    crop = (nw - 224) // 2
    whole_then_crop = drafted.resize((nw, 224), Image.Resampling.BICUBIC).crop((crop, 0, crop + 224, 224))
    left = crop * 640 / nw  # the crop's left edge, in drafted pixels
    centre = drafted.resize((224, 224), Image.Resampling.BICUBIC, box=(left, 0.0, left + 224 * 640 / nw, 360.0))
    fast = decode_resize(camera["720p"], cfg, "fast")
    np.testing.assert_array_equal(fast, np.asarray(centre))
    assert not np.array_equal(fast, np.asarray(whole_then_crop))
    assert np.abs(fast.astype(np.int16) - np.asarray(whole_then_crop, dtype=np.int16)).max() <= 2


def test_small_images_are_identical_on_both_paths(camera: dict[str, bytes]) -> None:
    cfg = PreprocessConfig(image_size=448)  # 720p is < 2 x 448 on its short side: nothing changes
    np.testing.assert_array_equal(decode_resize(camera["720p"], cfg, "fast"), decode_resize(camera["720p"], cfg))


def test_exif_rotated_large_jpeg_is_upright_on_the_fast_path() -> None:
    upright = photo(4032, 3024)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone held sideways writes it
    rotated = jpeg(stored, orientation=6)  # 6: display rotated 90 degrees clockwise
    cfg = PreprocessConfig(image_size=224, resize="squash", crop="none")  # squash keeps the aspect visible
    fast = decode_resize(rotated, cfg, "fast").astype(np.int16)
    ref = decode_resize(jpeg(upright), cfg, "exact").astype(np.int16)
    unrotated = decode_resize(jpeg(stored), cfg, "exact").astype(np.int16)
    assert np.abs(fast - ref).mean() < 2.0
    assert np.abs(fast - unrotated).mean() > 10 * np.abs(fast - ref).mean()
    assert load_image(rotated, draft=448).size == (1008, 756)  # decoded at 1/4 (3024x4032 stored), upright


def test_pixel_limit_applies_to_the_declared_size_before_the_reduced_decode(camera: dict[str, bytes]) -> None:
    # 4032x3024 decodes at 1008x756 on the fast path, under this limit; the file declares more
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(camera["12mp"], max_pixels=2_000_000, draft=448)


def test_model_input_and_decode_refuse_what_they_cannot_do(camera: dict[str, bytes]) -> None:
    cfg = PreprocessConfig(image_size=32)
    x = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError):
        model_input(x, cfg, TensorSpec("pixel_values", "float16", ("batch_size", 3, 32, 32)))
    with pytest.raises(ConfigError):
        decode_resize(camera["720p"], cfg, "fastest")
    np.testing.assert_array_equal(model_input(x, cfg, TensorSpec("p", "float32", (1, 3, 32, 32)))[0],
                                  normalize(x[0], cfg))


@pytest.mark.parametrize(("size", "box"), [(224, (139.9, 0.0, 500.1, 360.0)), (225, (0.0, 0.0, 504.0, 359.0)),
                                          (37, (3.5, 1.25, 90.0, 88.0)), (64, (0.0, 10.0, 96.0, 106.0))])
def test_the_two_halves_resample_to_the_one_pass_result(size: int, box: tuple[float, float, float, float]) -> None:
    img = photo(640, 360) if box[2] > 100 else photo(120, 110)
    for resample in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
        one = np.asarray(img.resize((size, size), resample, box=box)).astype(np.int16)
        diff = np.abs(np.asarray(_resample_halves(img, size, resample, box)) - one)
        # equal but where the lower box's start rounds differently in float: at 225 px, 1 value
        # (bicubic) and 71 (bilinear) of 151,875 are off by one, within one output row's worth
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 3 * size


def test_one_image_resamples_on_two_threads_with_the_one_pass_result(camera: dict[str, bytes]) -> None:
    cfg = PreprocessConfig(image_size=224)
    ran_on: list[str] = []
    real = Image.Image.resize
    together = threading.Barrier(2, timeout=10)  # broken (an error) unless both halves run at once

    def watched(self: Image.Image, *args: object, **kwargs: object) -> Image.Image:
        ran_on.append(threading.current_thread().name)
        together.wait()
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    for data in camera.values():
        one = decode_resize(data, cfg, "fast")
        ran_on.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Image.Image, "resize", watched)
            split = decode_resize(data, cfg, "fast", split=True)
        np.testing.assert_array_equal(split, one)
        assert len(ran_on) == 2 and len(set(ran_on)) == 2  # two halves, on two threads at once
        together.reset()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_still_resamples_one_image_on_two_threads(camera: dict[str, bytes]) -> None:
    # the parent's resample thread does not exist in a child forked after it started (a server
    # that warms up, then forks workers): the child must start its own, not wait on the parent's
    cfg = PreprocessConfig(image_size=224)
    want = decode_resize(camera["720p"], cfg, "fast", split=True)  # starts the parent's thread
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when the split resample gives the parent's pixels
        os.close(read)
        code = 1
        try:
            signal.alarm(20)  # a wait that never ends fails the test instead of hanging it
            code = 0 if np.array_equal(decode_resize(camera["720p"], cfg, "fast", split=True), want) else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    got = os.read(read, 1)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert got == bytes([0]) and os.waitstatus_to_exitcode(status) == 0
