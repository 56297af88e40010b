"""Runtime API beyond classify: text embeddings, on-device labels, backend choice, threads."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.bundle import Bundle
from edgeclip.errors import BundleError
from edgeclip.export.api import export_bundle
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import TextEncoder
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends import BACKENDS, auto_order, backend_class
from edgeclip.runtime.tokenizer import TextTokenizer
from edgeclip.train.shapes import ShapesDataset
from tests.conftest import TINY_CLASSES


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip"))


def test_embed_texts_matches_torch(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    clf = ZeroShotClassifier.load(tiny_bundle)
    texts = ["a red circle", "a photo of a star."]
    model, info = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ref = TextEncoder(model)(torch.from_numpy(TextTokenizer(info.tokenizer_path, info.tokenizer)(texts))).numpy()
    np.testing.assert_allclose(clf.embed_texts(texts), ref, atol=1e-5)


def test_set_labels_on_device_equals_exported_labels(bundle_copy: Path) -> None:
    exported = Bundle.open(bundle_copy).label_set("default")[0]
    clf = ZeroShotClassifier.load(bundle_copy, labels=None)
    clf.set_labels(TINY_CLASSES, None, name="again")
    np.testing.assert_allclose(clf.label_embeddings, exported, atol=1e-5)
    clf.set_labels(["red", "blue"], ["something {}"], name="colours")
    img = ShapesDataset("heldout", 1, 32)[0].image
    assert {k for k, _ in clf.classify([img])[0].predictions} == {"red", "blue"}
    clf.save_labels()
    b = Bundle.open(bundle_copy)
    b.verify()
    _, meta = b.label_set("colours")
    assert meta["classes"] == ["red", "blue"] and meta["templates"] == ["something {}"]
    assert ZeroShotClassifier.load(bundle_copy, labels="colours").classes == ["red", "blue"]


def test_set_labels_without_text_encoder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "img-only"
    export_bundle(tiny_checkpoint, out, encoders=["image"], labels={"default": (TINY_CLASSES, None)})
    clf = ZeroShotClassifier.load(out)
    assert clf.classify([ShapesDataset("heldout", 1, 32)[0].image])[0].ok
    with pytest.raises(BundleError, match="no text encoder") as e:
        clf.set_labels(["a", "b"])
    assert "--encoders image,text" in str(e.value)


def test_bundle_for_another_backend(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="no image encoder for backend 'openvino'") as e:
        ZeroShotClassifier.load(tiny_bundle, backend="openvino")
    usable = [b for b in BACKENDS if backend_class(b).available()]  # what this machine has
    assert f"installed backends: {', '.join(usable)}" in str(e.value) and "it has: onnx-fp32" in str(e.value)


def test_auto_prefers_openvino_on_x86_and_says_why(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import platform

    order, why = auto_order()
    if platform.machine() != "x86_64":
        pytest.skip("x86-specific order")
    assert order.index("openvino") < order.index("onnxruntime") and "x86" in why
    out = tmp_path / "b"
    export_bundle(tiny_checkpoint, out, targets=["onnx", "openvino"], labels={"default": (TINY_CLASSES, None)})
    clf = ZeroShotClassifier.load(out)
    assert clf.backend_name == "openvino" and "x86 CPU" in clf.image.reason


def test_eight_threads_get_the_sequential_results(tiny_bundle: Path) -> None:
    clf = ZeroShotClassifier.load(tiny_bundle)
    images = [ShapesDataset("heldout", 10, 32)[i].image for i in range(10)]
    expected = [clf.classify([im], top_k=3)[0].predictions for im in images]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: clf.classify([images[i % 10]], top_k=3)[0].predictions, range(400)))
    assert got == [expected[i % 10] for i in range(400)]
