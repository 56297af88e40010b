"""ZeroShotClassifier on the exported tiny bundle (onnxruntime backend, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import BundleError, EdgeclipError, UnknownNameError
from edgeclip.runtime import ZeroShotClassifier, list_backends
from tests.conftest import TINY_CLASSES


@pytest.fixture(scope="module")
def clf(tiny_bundle: Path) -> ZeroShotClassifier:
    return ZeroShotClassifier.load(tiny_bundle, threads=1)


def test_classify_ranks_all_labels_with_probabilities(clf: ZeroShotClassifier) -> None:
    images = [ShapesDataset("heldout", 4, 32)[i].image for i in range(4)]
    results = clf.classify(images, top_k=len(TINY_CLASSES))
    assert len(results) == 4
    for r in results:
        assert r.ok
        labels = [k for k, _ in r.predictions]
        probs = [p for _, p in r.predictions]
        assert sorted(labels) == sorted(TINY_CLASSES)
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_result_matches_manual_computation(clf: ZeroShotClassifier) -> None:
    img = ShapesDataset("heldout", 1, 32)[0].image
    emb, errors = clf.embed_images([img])
    assert errors == [None]
    logits = clf.logit_scale * clf.label_embeddings @ emb[0]
    assert clf.classify([img], top_k=1)[0].label == TINY_CLASSES[int(np.argmax(logits))]


def test_one_bad_image_fails_alone(clf: ZeroShotClassifier, tmp_path: Path) -> None:
    good = ShapesDataset("heldout", 1, 32)[0].image
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    results = clf.classify([good, tmp_path / "missing.png", corrupt, good], top_k=2)
    assert [r.ok for r in results] == [True, False, False, True]
    assert "not found" in (results[1].error or "")
    assert "cannot decode" in (results[2].error or "")
    assert results[0].predictions == results[3].predictions
    assert results[1].to_dict().keys() == {"image", "error"}


def test_batching_does_not_change_results(tiny_bundle: Path) -> None:
    images = [ShapesDataset("heldout", 7, 32)[i].image for i in range(7)]
    a = ZeroShotClassifier.load(tiny_bundle, max_batch=2).embed_images(images)[0]
    b = ZeroShotClassifier.load(tiny_bundle, max_batch=32).embed_images(images)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_errors(tiny_bundle: Path, clf: ZeroShotClassifier) -> None:
    with pytest.raises(EdgeclipError, match="no images"):
        clf.classify([])
    with pytest.raises(UnknownNameError, match="label set"):
        ZeroShotClassifier.load(tiny_bundle, labels="nope")
    with pytest.raises(UnknownNameError, match="unknown backend 'onnxrt'; did you mean 'onnxruntime'"):
        ZeroShotClassifier.load(tiny_bundle, backend="onnxrt")
    with pytest.raises(BundleError, match="no image encoder for backend 'auto' at precision 'int8'"):
        ZeroShotClassifier.load(tiny_bundle, precision="int8")


def test_list_backends_reports_installed_sdks() -> None:
    import sys

    found = list_backends()
    assert set(found) == {"onnxruntime", "openvino", "tensorrt", "coreml", "litert", "rknn"}
    assert found["onnxruntime"] and found["openvino"] and found["litert"]  # all installed by the [all] extra
    assert found["coreml"] == (sys.platform == "darwin")
