"""The runtime's numpy/PIL preprocessing equals the trainer's eval transform, on real photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.bundle import PreprocessConfig
from edgeclip.errors import ImageError
from edgeclip.runtime.preprocess import load_image, preprocess
from edgeclip.train.transforms import eval_transform


def _photos() -> list[Path]:
    """Real photographs shipped inside scikit-learn (china.jpg, flower.jpg)."""
    import sklearn.datasets

    root = Path(sklearn.datasets.__file__).parent / "images"
    photos = sorted(root.glob("*.jpg"))
    assert len(photos) >= 2
    return photos


def _odd_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (97, 211, 3), dtype=np.uint8))
    return [
        rgb,
        rgb.convert("L"),
        rgb.convert("RGBA"),
        rgb.convert("P"),
        rgb.convert("CMYK"),
        rgb.resize((13, 300)),
        Image.fromarray((rng.integers(0, 65535, (40, 50))).astype(np.uint16)),  # 16-bit grey
        Image.fromarray(rng.random((33, 44)).astype(np.float32), "F"),
    ]


@pytest.mark.parametrize("size", [32, 224])
def test_runtime_equals_trainer_eval_transform(size: int) -> None:
    cfg = PreprocessConfig(image_size=size)
    trainer = eval_transform(cfg)
    inputs: list = [*_photos(), *_odd_images()]  # type: ignore[type-arg]
    for src in inputs:
        ours = preprocess(src, cfg)
        ref = trainer(src).numpy()
        assert ours.shape == ref.shape == (3, size, size)
        assert ours.dtype == np.float32
        assert np.abs(ours - ref).max() <= 1e-6, src


def test_photo_geometry_is_shortest_side_then_center_crop() -> None:
    photo = _photos()[0]
    with Image.open(photo) as im:
        short = im.convert("RGB")
    w, h = short.size
    assert w != h
    cfg = PreprocessConfig(image_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = preprocess(photo, cfg)
    resized = short.resize((int(64 * w / h), 64) if w > h else (64, int(64 * h / w)), Image.Resampling.BICUBIC)
    left, top = (resized.width - 64) // 2, (resized.height - 64) // 2
    expect = np.asarray(resized.crop((left, top, left + 64, top + 64)), dtype=np.float32) / 255
    np.testing.assert_allclose(x.transpose(1, 2, 0), expect, atol=1e-6)


def test_inputs_of_every_kind_agree() -> None:
    photo = _photos()[1]
    cfg = PreprocessConfig(image_size=48)
    data = photo.read_bytes()
    ref = preprocess(photo, cfg)
    with Image.open(photo) as im:
        im.load()
        pil, arr = im.copy(), np.asarray(im.convert("RGB"))
    for src in (str(photo), data, io.BytesIO(data), pil, arr):
        np.testing.assert_array_equal(preprocess(src, cfg), ref)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    out = load_image(buf.getvalue())
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # blue ends up on top


def test_bad_inputs_are_image_errors(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, "PNG")
    truncated = png.getvalue()[:40]
    for bad in (tmp_path / "missing.jpg", b"not an image", truncated, np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3))):
        with pytest.raises(ImageError):
            preprocess(bad, PreprocessConfig(image_size=32))


def test_decompression_bomb_is_refused() -> None:
    buf = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buf, "PNG")
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(buf.getvalue(), max_pixels=1_000_000)


def test_matches_transformers_clip_image_processor_on_real_photos() -> None:
    """Same resize (shortest side, bicubic, floor), crop (center, floor) and mean/std as HF."""
    import logging

    from transformers import CLIPImageProcessor

    logging.getLogger("transformers").setLevel(logging.ERROR)  # it notes its torchvision fallback
    proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    cfg = PreprocessConfig(image_size=224)
    for photo in _photos():
        with Image.open(photo) as im:
            rgb = im.convert("RGB")
        for img in (rgb, rgb.resize((301, 211)), rgb.resize((97, 555))):
            ref = proc(images=img, return_tensors="np")["pixel_values"][0]
            assert np.abs(preprocess(img, cfg) - ref).max() <= 1e-6


def test_golden_file() -> None:
    """tests/golden/preprocess.npz (regenerate with tests/golden/make_preprocess_golden.py)."""
    from tests.golden.make_preprocess_golden import SIZE, inputs

    golden = np.load(Path(__file__).parents[1] / "golden" / "preprocess.npz", allow_pickle=False)
    cfg = PreprocessConfig(image_size=SIZE)
    for name, src in inputs().items():
        np.testing.assert_allclose(preprocess(src, cfg), golden[name], atol=1e-6, rtol=0)  # type: ignore[arg-type]
