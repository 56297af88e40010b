"""ZeroShotClassifier over many images (onnxruntime, the tiny bundle): micro-batches decoded on a
thread pool keep input order and isolate a bad image; the decode path follows the bundle's record
unless asked, and the fast path's embeddings stay within the issue's bound on camera-size JPEGs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgeclip.bundle import MANIFEST
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import BundleError
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.preprocess import DEFAULT_DECODE, decode_resize, model_input

# issue 18's bound for making the fast path the default: cosine to the exact path >= 0.999
COSINE_BOUND = 0.999


def camera_jpegs() -> list[bytes]:
    import sklearn.datasets

    out = []
    for name in ("china.jpg", "flower.jpg"):
        for w, h in ((1280, 720), (4032, 3024)):
            buf = io.BytesIO()
            img = Image.fromarray(sklearn.datasets.load_sample_image(name)).resize((w, h), Image.Resampling.BICUBIC)
            img.save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def test_stream_keeps_order_and_one_bad_image_fails_alone(tiny_bundle: Path) -> None:
    clf = ZeroShotClassifier.load(tiny_bundle, max_batch=3, exact_preprocess=True)
    shapes = ShapesDataset("heldout", 9, 48)
    images: list[object] = [shapes[i].image for i in range(9)]
    images.insert(4, b"\xff\xd8\xff\xe0 not a jpeg")  # 10 inputs: four micro-batches of <= 3
    done: list[int] = []
    emb, errors = clf.embed_images(images, progress=done.append)  # type: ignore[arg-type]
    assert done == [3, 6, 9, 10]
    assert [e is None for e in errors] == [True] * 4 + [False] + [True] * 5
    assert "cannot decode" in (errors[4] or "") and np.isnan(emb[4]).all()
    cfg, spec = clf.preprocess_cfg, clf.image.artifact.inputs[0]
    for i, src in enumerate(images):
        if i != 4:  # each row is that image's own embedding, computed alone
            alone = clf.image(model_input(decode_resize(src, cfg)[None], cfg, spec))[0]  # type: ignore[arg-type]
            np.testing.assert_allclose(emb[i], alone, atol=1e-6)
    results = clf.classify(images, top_k=1)  # type: ignore[arg-type]
    assert [r.ok for r in results] == [e is None for e in errors]


def test_fast_path_embeddings_within_the_bound(tiny_bundle: Path) -> None:
    exact = ZeroShotClassifier.load(tiny_bundle, exact_preprocess=True)
    fast = ZeroShotClassifier.load(tiny_bundle, exact_preprocess=False)
    assert (exact.decode, fast.decode) == ("exact", "fast")
    images = camera_jpegs()
    e, f = exact.embed_images(images)[0], fast.embed_images(images)[0]
    cos = np.sum(e * f, axis=1)  # both L2-normalised
    assert cos.min() >= COSINE_BOUND, cos
    assert not np.array_equal(e, f)  # the paths really differ on these sizes


def test_decode_path_follows_the_bundle_record(tiny_bundle: Path, tmp_path: Path) -> None:
    assert json.loads((tiny_bundle / MANIFEST).read_text())["preprocess"]["decode"] == DEFAULT_DECODE
    assert ZeroShotClassifier.load(tiny_bundle).decode == DEFAULT_DECODE
    copy = shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip")
    for record, expect in (("exact", "exact"), (None, "exact"), ("fast", "fast")):
        m = json.loads((copy / MANIFEST).read_text())
        if record is None:  # written before the fast path existed: validated with the exact one
            m["preprocess"].pop("decode")
        else:
            m["preprocess"]["decode"] = record
        (copy / MANIFEST).write_text(json.dumps(m))
        assert ZeroShotClassifier.load(copy).decode == expect
        assert ZeroShotClassifier.load(copy, exact_preprocess=True).decode == "exact"
        assert ZeroShotClassifier.load(copy, exact_preprocess=False).decode == "fast"
    m["preprocess"]["decode"] = "turbo"
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="decode"):
        ZeroShotClassifier.load(copy)


def test_one_image_splits_its_resample_over_two_threads_unless_limited_to_one(
        tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip.runtime import preprocess

    calls: list[int] = []
    real = preprocess._resample_halves

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(preprocess, "_resample_halves", counted)
    frame = camera_jpegs()[0]  # 1280x720: on the fast path for the tiny model
    fast = ZeroShotClassifier.load(tiny_bundle, exact_preprocess=False)
    one = fast.embed_images([frame])[0]
    assert len(calls) == 1
    two = fast.embed_images([frame, frame])[0]  # a stream: images decode in parallel instead
    assert len(calls) == 1
    np.testing.assert_allclose(two, np.concatenate([one, one]), atol=1e-6)
    ZeroShotClassifier.load(tiny_bundle, exact_preprocess=False, threads=1).embed_images([frame])
    assert len(calls) == 1
