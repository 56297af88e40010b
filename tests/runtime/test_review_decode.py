"""Review of the fast decode path's split resample and declared-size choice, on real JPEG/PNG/WebP
files, real Pillow and the tiny onnxruntime bundle (tests/conftest.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.bundle import PreprocessConfig
from edgeclip.runtime.classifier import ZeroShotClassifier
from edgeclip.runtime.preprocess import decode_resize

ORIENTATION = 0x0112


def encode(w: int, h: int, fmt: str = "JPEG", orientation: int | None = None, mode: str = "RGB",
           name: str = "flower.jpg", **kw: object) -> bytes:
    import sklearn.datasets

    img = Image.fromarray(sklearn.datasets.load_sample_image(name)).resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if fmt == "JPEG":
        exif = Image.Exif()
        if orientation is not None:
            exif[ORIENTATION] = orientation
        img.convert(mode).save(buf, fmt, quality=90, exif=exif.tobytes(), **kw)
    else:
        img.convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


def off_by(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(largest difference in levels, how many values differ)."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), int(np.count_nonzero(d))


CASES = [  # (w, h, format, EXIF orientation, mode, extra save options)
    (1000, 449, "JPEG", 6, "RGB", {}),  # stored landscape, shown portrait 449x1000
    (1000, 449, "JPEG", 8, "RGB", {"progressive": True}),
    (1919, 1081, "JPEG", None, "L", {}),
    (1600, 1200, "JPEG", None, "CMYK", {}),
    (897, 673, "PNG", None, "RGB", {}),  # no reduced-size decode: the integer-reduce path
    (641, 1999, "WEBP", None, "RGB", {"quality": 90}),
]


@pytest.mark.parametrize(("w", "h", "fmt", "orientation", "mode", "kw"), CASES)
@pytest.mark.parametrize("size", [224, 225, 37])
def test_split_resample_matches_one_pass_and_stays_near_exact(
        w: int, h: int, fmt: str, orientation: int | None, mode: str, kw: dict[str, object], size: int) -> None:
    data = encode(w, h, fmt, orientation, mode, **kw)
    for interp in ("bicubic", "bilinear"):
        for resize, crop in (("shortest", "center"), ("squash", "none")):
            cfg = PreprocessConfig(image_size=size, interpolation=interp, resize=resize, crop=crop)
            one = decode_resize(data, cfg, "fast")
            split = decode_resize(data, cfg, "fast", split=True)
            assert split.shape == (size, size, 3)
            # an image alone (split) must give the pixels it gives inside a batch (one thread)
            np.testing.assert_array_equal(split, one, err_msg=f"{interp} {resize}")
            exact = decode_resize(data, cfg, "exact")
            # the same picture as the exact path: right orientation, crop and colours (a rotated or
            # mis-cropped result differs by tens of levels on average)
            assert np.abs(split.astype(np.int16) - exact).mean() < 12.0


@pytest.mark.parametrize(("n", "size"), [(451, 224), (99, 48), (69, 32)])
def test_split_resample_matches_one_pass_on_a_square_jpeg(n: int, size: int) -> None:
    # decodes at half size (226x226 for 224): both axes shrink a little. Pillow 13 orders a call's two
    # passes by its shape, and a half of this crop took the other order than one whole call did: up
    # to 5 levels off, in every row
    data = encode(n, n)
    cfg = PreprocessConfig(image_size=size)
    split, one = decode_resize(data, cfg, "fast", split=True), decode_resize(data, cfg, "fast")
    np.testing.assert_array_equal(split, one)
    # and still the exact path's picture (a wrong crop or turn is tens of levels off on average)
    assert np.abs(split.astype(np.int16) - decode_resize(data, cfg, "exact")).mean() < 8.0


def test_one_image_embeds_as_it_does_inside_a_batch(tiny_bundle: Path) -> None:
    square = encode(69, 69)  # 2 x 32 + 5: on the fast path for the tiny 32-px model, decoded at 35x35
    clf = ZeroShotClassifier.load(tiny_bundle, exact_preprocess=False)
    alone, errors = clf.embed_images([square])
    batch, _ = clf.embed_images([square, square])
    assert errors == [None]
    np.testing.assert_allclose(alone[0], batch[0], atol=1e-6)


def test_many_threads_classifying_one_image_each_get_the_sequential_answers(tiny_bundle: Path) -> None:
    clf = ZeroShotClassifier.load(tiny_bundle, exact_preprocess=False)
    inputs: list[object] = [encode(1280, 720), encode(720, 1280, name="china.jpg"), encode(1000, 449, orientation=6),
                            b"not an image", np.asarray(Image.open(io.BytesIO(encode(640, 400))).convert("RGB")),
                            Image.open(io.BytesIO(encode(300, 500, "PNG")))]
    want = [clf.embed_images([x]) for x in inputs]  # one at a time, split resample on
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(clf.embed_images, [inputs[i % len(inputs)]]) for i in range(48)]
        _, pending = wait(futures, timeout=120)  # a deadlock fails here instead of hanging
    assert not pending
    for i, f in enumerate(futures):
        emb, errors = f.result()
        w_emb, w_errors = want[i % len(inputs)]
        assert [e is None for e in errors] == [e is None for e in w_errors]
        np.testing.assert_array_equal(emb, w_emb)  # NaN rows compare equal too
    bad = want[3]  # the bad image failed alone, with a typed message, nothing raised
    assert bad[1][0] is not None and "cannot decode" in bad[1][0] and np.isnan(bad[0]).all()
    assert all(e == [None] for _, e in want[:3] + want[4:])


def test_split_one_image_classify_equals_the_one_thread_classifier(tiny_bundle: Path) -> None:
    # threads=1 switches the split off: the answers must be the same images' answers
    landscape = encode(1280, 720)
    split_on = ZeroShotClassifier.load(tiny_bundle, exact_preprocess=False)
    split_off = ZeroShotClassifier.load(tiny_bundle, exact_preprocess=False, threads=1)
    a, b = split_on.embed_images([landscape])[0], split_off.embed_images([landscape])[0]
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, split_on.embed_images([landscape, landscape])[0][:1], atol=1e-6)


def test_one_image_still_decodes_while_the_interpreter_shuts_down(tmp_path: Path) -> None:
    # an atexit hook (a server flushing its last request) runs after concurrent.futures refuses new
    # work: the split resample must fall back to this thread, not raise an untyped RuntimeError
    frame = tmp_path / "frame.jpg"
    frame.write_bytes(encode(1280, 720))
    script = (
        "import atexit\n"
        "from edgeclip.bundle import PreprocessConfig\n"
        "from edgeclip.runtime.preprocess import decode_resize\n"
        f"path, cfg = {str(frame)!r}, PreprocessConfig(image_size=224)\n"
        "want = decode_resize(path, cfg, 'fast', split=True)\n"
        "atexit.register(lambda: print('same' if (decode_resize(path, cfg, 'fast', split=True) == want).all()"
        " else 'differs'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert run.stdout.strip() == "same", run.stderr[-2000:]
