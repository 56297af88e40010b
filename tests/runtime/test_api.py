"""Runtime API beyond classify: text embeddings, on-device labels, backend choice, threads."""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.bundle import Bundle
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import BundleError, ConfigError, PlatformError, UnknownNameError
from edgeclip.export.driver import export_bundle
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import TextEncoder
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends import BACKENDS, auto_order, backend_class
from edgeclip.runtime.similarity import cosine_rows
from edgeclip.runtime.tokenizer import TextTokenizer
from tests.conftest import TINY_CLASSES, run_cli


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


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the refusal off Apple devices")
def test_coreml_only_bundle_off_macos_says_why(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """coremltools is installed here: the reason is the OS, and no pip line can fix it."""
    pytest.importorskip("coremltools")
    out = tmp_path / "coreml.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["coreml"], precision="fp16", encoders=["image"],
                  labels={"default": (TINY_CLASSES, None)})
    with pytest.raises(BundleError, match="Core ML runs only on macOS and iOS") as e:
        ZeroShotClassifier.load(out)
    assert "coremltools is installed" in str(e.value) and "pip install" not in str(e.value)
    assert "--target onnx" in str(e.value.fix)
    with pytest.raises(PlatformError, match="Core ML runs only on macOS and iOS"):
        ZeroShotClassifier.load(out, backend="coreml")
    img = tmp_path / "img.png"
    ShapesDataset("heldout", 1, 32)[0].image.save(img)
    proc = run_cli("classify", str(out), str(img))
    assert proc.returncode == 1 and "Core ML runs only on macOS and iOS" in proc.stderr, proc.stderr
    assert "pip install" not in proc.stderr and "Traceback" not in proc.stderr


def test_bundle_without_label_sets_says_how_to_add_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "nolabels.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx"])
    with pytest.raises(BundleError, match="has no label sets") as e:
        ZeroShotClassifier.load(out)
    assert f"edgeclip labels {out} --classes classes.txt --name default" in str(e.value.fix)
    img = tmp_path / "img.png"
    ShapesDataset("heldout", 1, 32)[0].image.save(img)
    proc = run_cli("classify", str(out), str(img))
    assert proc.returncode == 1 and "fix: add it on this device: `edgeclip labels" in proc.stderr, proc.stderr
    (tmp_path / "classes.txt").write_text("\n".join(TINY_CLASSES) + "\n")
    proc = run_cli("labels", str(out), "--classes", str(tmp_path / "classes.txt"), "--name", "default")
    assert proc.returncode == 0, proc.stderr  # the fix works as written
    assert ZeroShotClassifier.load(out).classify([img])[0].ok
    with pytest.raises(UnknownNameError, match="unknown label set 'pets'") as e:
        ZeroShotClassifier.load(out, labels="pets")
    assert "choose one of: default" in str(e.value.fix) and "--name pets" in str(e.value.fix)

    image_only = tmp_path / "image-only.edgeclip"
    export_bundle(tiny_checkpoint, image_only, targets=["onnx"], encoders=["image"])
    with pytest.raises(BundleError, match="has no label sets") as e:
        ZeroShotClassifier.load(image_only)
    assert "re-export with `--labels classes.txt`" in str(e.value.fix)  # no text encoder to run `labels`


def test_save_labels_never_replaces_a_label_set_silently(bundle_copy: Path) -> None:
    before = Bundle.open(bundle_copy).label_set("default")
    clf = ZeroShotClassifier.load(bundle_copy, labels=None)
    clf.set_labels(["red", "blue"], name="default")
    with pytest.raises(ConfigError, match="already has a label set 'default'") as e:
        clf.save_labels()
    assert "--overwrite" in str(e.value.fix)
    after = Bundle.open(bundle_copy).label_set("default")
    assert after[1]["classes"] == TINY_CLASSES and np.array_equal(after[0], before[0])
    clf.save_labels(overwrite=True)
    assert Bundle.open(bundle_copy).label_set("default")[1]["classes"] == ["red", "blue"]


def test_row_cosine_values_zero_rows_and_fp16_inputs() -> None:
    """The one row cosine that validation, the INT8 guard and bench report."""
    a = np.array([[1, 0], [3, 4], [0, 0], [2, 0]], dtype=np.float32)
    b = np.array([[1, 1], [6, 8], [1, 0], [-5, 0]], dtype=np.float32)
    np.testing.assert_allclose(cosine_rows(a, b), [2**-0.5, 1.0, 0.0, -1.0], rtol=0, atol=1e-12)
    # fp16 embeddings are measured in float64: a vector against itself is 1, not 1 +- fp16 rounding
    x = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float16)
    cos = cosine_rows(x, x)
    assert cos.dtype == np.float64 and np.abs(cos - 1).max() < 1e-12
