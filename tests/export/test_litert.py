"""The LiteRT target end to end on the tiny checkpoint: every precision exported, validated against torch
and run through the runtime's LiteRT backend; the same zero-shot labels as ONNX Runtime; typed refusals."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from edgeclip.bundle import Bundle
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import ConfigError
from edgeclip.export.driver import export_bundle
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends.base import BackendOptions
from tests.conftest import TINY_CLASSES
from tests.export.target_template import TargetTemplate

pytest.importorskip("litert_torch", reason="--target litert needs litert-torch (pip install 'edgeclip[litert-export]')")

# the README's INT8 budget (`--min-cosine` 0.995, top-1 drop <= 1 point), written here, not read from the code
INT8_MIN_COSINE = 0.995
INT8_MAX_DROP = 1.0


class TestLiteRT(TargetTemplate):
    target = "litert"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    backend = "litert"
    backend_options = BackendOptions(threads=2)

    @pytest.fixture(scope="class")
    @classmethod
    def bundle(cls, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
        out = tmp_path_factory.mktemp("export-litert") / "b.edgeclip"
        # one export run: each tower is converted once and every precision is made from that graph
        export_bundle(tiny_checkpoint, out, targets=["litert"], precision=[*cls.precisions, "int8-dynamic"],
                      labels={"default": (TINY_CLASSES, None)})
        return Bundle.open(out)

    def _float_only(self, bundle: Bundle) -> Bundle:
        """The template's checks hold float precisions to the README's parity; int8 is judged by the guard."""
        b = Bundle.open(bundle.root)
        b.manifest.artifacts = [a for a in b.manifest.artifacts if a.precision in self.precisions]
        return b

    def test_every_encoder_and_precision_is_registered_and_complete(self, bundle: Bundle) -> None:
        super().test_every_encoder_and_precision_is_registered_and_complete(self._float_only(bundle))

    def test_runtime_backend_matches_torch(self, bundle: Bundle, tiny_checkpoint: Path) -> None:
        super().test_runtime_backend_matches_torch(self._float_only(bundle), tiny_checkpoint)

    def check_target_specific(self, bundle: Bundle, artifact) -> None:  # type: ignore[no-untyped-def]
        assert [Path(f).name for f in artifact.files] == ["model.tflite"]
        env = artifact.environment.details
        assert env["litert-torch"] and env["ai-edge-litert"] and env["batch"] == "static 1"
        assert "LiteRT Interpreter" in artifact.validation.checked_with
        # the manifest records what the saved file takes (batch 1; token ids int32)
        from ai_edge_litert.interpreter import Interpreter

        (graph_input,) = Interpreter(model_path=str(bundle.root / artifact.main_file)).get_input_details()
        assert list(artifact.inputs[0].shape) == graph_input["shape"].tolist()
        assert artifact.inputs[0].dtype == np.dtype(graph_input["dtype"]).name
        assert artifact.outputs[0].shape[0] == 1

    def test_each_file_stores_weights_in_its_precision(self, bundle: Bundle) -> None:
        from ai_edge_litert.interpreter import Interpreter

        for encoder in ("image", "text"):
            kinds = {}
            for p in ("fp32", "fp16", "int8-dynamic"):
                path = bundle.root / bundle.manifest.find(encoder, "litert", p)[0].main_file
                kinds[p] = {np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(path)).get_tensor_details()}
            assert "float16" not in kinds["fp32"] and "int8" not in kinds["fp32"]
            assert "float16" in kinds["fp16"] and "int8" not in kinds["fp16"]
            assert "int8" in kinds["int8-dynamic"] and "float16" not in kinds["int8-dynamic"]

    def test_int8_dynamic_passes_the_guard_on_the_saved_file(self, bundle: Bundle) -> None:
        check_guarded(bundle, "int8-dynamic")

    def test_same_top1_as_onnx_on_held_out_images(self, bundle: Bundle, tiny_checkpoint: Path) -> None:
        export_bundle(tiny_checkpoint, bundle.root, targets=["onnx"], labels={"default": (TINY_CLASSES, None)})
        images = [ShapesDataset("heldout", 24, 32)[i].image for i in range(24)]
        lite = ZeroShotClassifier.load(bundle.root, backend="litert", precision="fp32")
        ort = ZeroShotClassifier.load(bundle.root, backend="onnxruntime", precision="fp32")
        assert [r.label for r in lite.classify(images)] == [r.label for r in ort.classify(images)]
        a, b = lite.embed_images(images)[0], ort.embed_images(images)[0]
        assert float(np.min((a * b).sum(1))) >= 0.99999


def check_guarded(bundle: Bundle, precision: str) -> None:
    for encoder in ("image", "text"):
        a = bundle.manifest.find(encoder, "litert", precision)[0]
        held = a.validation.heldout
        assert a.validation.passed is True and held is not None, a.key
        assert held.cosine_min >= INT8_MIN_COSINE, a.key
        assert (held.top1_drop or 0.0) <= INT8_MAX_DROP, a.key


@pytest.mark.slow
def test_full_int8_is_calibrated_and_guarded(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["litert"], precision="int8", labels={"default": (TINY_CLASSES, None)},
                  options={"calib": "builtin:shapes"})
    bundle = Bundle.open(out)
    check_guarded(bundle, "int8")
    for a in bundle.manifest.artifacts:
        assert a.calibration is not None and a.calibration.source == "builtin:shapes"
        assert "FULLY_CONNECTED" in a.calibration.details["scheme"]
        assert a.calibration.measured.cosine_min >= INT8_MIN_COSINE
    images = [ShapesDataset("heldout", 24, 32)[i].image for i in range(24)]
    assert len(ZeroShotClassifier.load(out, backend="litert", precision="int8").classify(images)) == 24


def test_int8_without_calibration_data_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs calibration images") as e:
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["litert"], precision="int8")
    assert "--calib" in (e.value.fix or "")
    assert not (tmp_path / "b").exists()


def test_a_calibration_method_litert_lacks_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--calib-method entropy is not available for litert"):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["litert"], precision="int8", encoders=["image"],
                      options={"calib": "builtin:shapes", "calib_method": "entropy"})
