from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeclip.bundle import Bundle
from edgeclip.data.shapes import ShapesDataset
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.openvino import OpenVinoBackend
from tests.export.target_template import TargetTemplate


class TestOpenVino(TargetTemplate):
    target = "openvino"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    backend = "openvino"
    backend_options = BackendOptions(precision_hint="f32")

    def check_target_specific(self, bundle: Bundle, artifact) -> None:  # type: ignore[no-untyped-def]
        assert sorted(Path(f).suffix for f in artifact.files) == [".bin", ".xml"]
        assert "INFERENCE_PRECISION_HINT=f32" in artifact.validation.checked_with
        xml = (bundle.root / artifact.main_file).read_text()
        assert ('element_type="f16"' in xml) == (artifact.precision == "fp16")

    def test_precision_hint_is_exposed(self, bundle: Bundle) -> None:
        a = bundle.manifest.find("image", "openvino", "fp32")[0]
        f32 = OpenVinoBackend(bundle.artifact_path(a), a, BackendOptions(precision_hint="f32"))
        assert f32.precision_hint == "f32"
        default = OpenVinoBackend(bundle.artifact_path(a), a, BackendOptions())
        assert default.precision_hint in ("f32", "bf16", "f16")  # the device's own default

    def test_same_top1_as_onnx_on_held_out_images(self, bundle: Bundle, tiny_checkpoint: Path) -> None:
        from edgeclip.export.driver import export_bundle
        from tests.conftest import TINY_CLASSES

        export_bundle(tiny_checkpoint, bundle.root, targets=["onnx"], labels={"default": (TINY_CLASSES, None)})
        images = [ShapesDataset("heldout", 24, 32)[i].image for i in range(24)]
        ov = ZeroShotClassifier.load(bundle.root, backend="openvino", precision="fp32")
        ort = ZeroShotClassifier.load(bundle.root, backend="onnxruntime", precision="fp32")
        assert [r.label for r in ov.classify(images)] == [r.label for r in ort.classify(images)]
        a, b = ov.embed_images(images)[0], ort.embed_images(images)[0]
        assert float(np.min((a * b).sum(1))) >= 0.999


def test_openvino_backend_is_thread_safe(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from edgeclip.export.driver import export_bundle
    from tests.conftest import TINY_CLASSES

    out = tmp_path / "b"
    export_bundle(tiny_checkpoint, out, targets=["openvino"], encoders=["image"],
                  labels={"default": (TINY_CLASSES, None)})
    clf = ZeroShotClassifier.load(out, backend="openvino")
    images = [ShapesDataset("heldout", 8, 32)[i].image for i in range(8)]
    expected = [r.predictions for r in clf.classify(images)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: clf.classify([images[i % 8]])[0].predictions, range(32)))
    assert got == [expected[i % 8] for i in range(32)]
