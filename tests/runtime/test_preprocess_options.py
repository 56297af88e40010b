"""Manifest preprocessing options that other tests only exercise at their defaults: bilinear
interpolation after a shortest-side resize (exact and fast path), rescale_factor on the path the
classifier feeds (model_input), and 16-bit images scaled 65535 -> 255."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.bundle import Bundle, PreprocessConfig, TensorSpec
from edgeclip.errors import BundleError, ImageError
from edgeclip.runtime.preprocess import decode_resize, load_image, model_input, preprocess


def photo(w: int, h: int) -> Image.Image:
    import sklearn.datasets

    return Image.fromarray(sklearn.datasets.load_sample_image("china.jpg")).resize((w, h), Image.Resampling.BICUBIC)


def test_shortest_side_bilinear_equals_transformers() -> None:
    """CLIPImageProcessor with resample=BILINEAR (MobileCLIP-style configs), as an independent reference."""
    from transformers import CLIPImageProcessor

    logging.getLogger("transformers").setLevel(logging.ERROR)
    size = 64
    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              resample=Image.Resampling.BILINEAR)
    cfg = PreprocessConfig(image_size=size, interpolation="bilinear")
    for img in (photo(301, 211), photo(97, 155)):
        ref = proc(images=img, return_tensors="np")["pixel_values"][0]
        assert np.abs(preprocess(img, cfg) - ref).max() <= 1e-6
        assert np.abs(preprocess(img, PreprocessConfig(image_size=size)) - ref).max() > 1e-3  # bicubic differs


def test_fast_path_resamples_with_the_manifest_interpolation() -> None:
    """A 1280x720 JPEG for a 224-px model: the fast path decodes at 640x360 and resamples the crop's
    region with the configured filter (geometry written out: long side 398 floored, crop left 87)."""
    buf = io.BytesIO()
    photo(1280, 720).save(buf, "JPEG", quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        im.draft(None, (224, 224))
        drafted = im.convert("RGB")
    assert drafted.size == (640, 360)
    box = (87 * 640 / 398, 0.0, (87 + 224) * 640 / 398, 360.0)
    for name, resample in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)):
        want = np.asarray(drafted.resize((224, 224), resample, box=box), dtype=np.int16)
        other = Image.Resampling.BICUBIC if name == "bilinear" else Image.Resampling.BILINEAR
        wrong = np.asarray(drafted.resize((224, 224), other, box=box), dtype=np.int16)
        got = decode_resize(buf.getvalue(), PreprocessConfig(image_size=224, interpolation=name), "fast")
        diff = np.abs(got.astype(np.int16) - want)
        assert diff.max() <= 1  # the two half-resamples round a few values differently at most
        assert diff.sum() < np.abs(got.astype(np.int16) - wrong).sum() / 10


@pytest.mark.parametrize("rescale", [1 / 255, 1.0])
def test_model_input_applies_rescale_mean_and_std(rescale: float) -> None:
    """What the classifier feeds the encoder: (u8 * rescale_factor - mean) / std, per channel, NCHW."""
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    cfg = PreprocessConfig(image_size=8, mean=mean, std=std, rescale_factor=rescale)
    got = model_input(u8, cfg, TensorSpec("pixel_values", "float32", ("batch_size", 3, 8, 8)))
    want = (u8.astype(np.float64) * rescale - np.array(mean)) / np.array(std)
    assert got.dtype == np.float32 and got.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_uint8_graph_input_gets_the_rgb_pixels_unchanged() -> None:
    """An artifact that normalises inside its graph (uint8 NHWC input) is fed the decoded RGB bytes."""
    u8 = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = model_input(u8, PreprocessConfig(image_size=8), TensorSpec("pixel_values", "uint8",
                                                                      ("batch_size", 8, 8, 3), layout="NHWC"))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, u8)


def test_sixteen_bit_grey_maps_65535_to_255() -> None:
    """257 * k in 16 bits is k in 8 bits (65535 / 255 = 257), as PIL's own I;16 -> L conversion of
    full-range data would give."""
    k = np.array([[0, 1, 100, 128], [200, 254, 255, 37]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(k * 257).save(buf, "PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.mode.startswith("I")  # decoded as 16-bit, the branch under test
    rgb = np.asarray(load_image(buf.getvalue()))
    np.testing.assert_array_equal(rgb, np.repeat(k[..., None], 3, axis=2).astype(np.uint8))


def test_a_channel_order_this_runtime_does_not_feed_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """The manifest records channel_order; feeding RGB to a graph that wants BGR would classify
    silently wrong, so opening such a bundle is refused (as another decode path is)."""
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["preprocess"]["channel_order"] = "BGR"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="BGR") as e:
        Bundle.open(bundle)
    assert e.value.fix


def test_an_extreme_strip_keeps_only_its_centre() -> None:
    """A 4000x20 strip for a 32-px model would be 6400x32 before the crop; the runtime resamples
    only the centre region instead, and must give the resize-then-crop picture (within 2 levels)."""
    strip = photo(4000, 20)
    cfg = PreprocessConfig(image_size=32)
    resized = strip.resize((6400, 32), Image.Resampling.BICUBIC)  # shortest side 32, long side 32*4000/20
    want = np.asarray(resized.crop((3184, 0, 3216, 32)), dtype=np.int16)
    for decode in ("exact", "fast"):
        got = decode_resize(strip, cfg, decode).astype(np.int16)
        assert np.abs(got - want).max() <= 2, decode


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int64, np.bool_])
def test_an_array_that_is_not_uint8_rgb_says_what_is_expected(dtype: type) -> None:
    with pytest.raises(ImageError, match="uint8 HxWx3"):
        load_image(np.ones((4, 4, 3), dtype=dtype))
