"""The RKNN target: .rknn files built by rknn-toolkit2 in its own environment and checked on its PC
simulator (accuracy only), the simulator backend, typed refusals, and the environment's creation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from edgeclip.bundle import Bundle
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import ConfigError, MissingDependencyError, UnknownNameError
from edgeclip.export.driver import export_bundle
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.rknn_toolkit import ENV_VAR, create_env, has_toolkit_env, toolkit_python
from tests.conftest import TINY_CLASSES
from tests.export.target_template import TargetTemplate

needs_toolkit = pytest.mark.skipif(
    not has_toolkit_env(),
    reason="the RKNN toolkit environment is absent: create it with `python -m edgeclip.runtime.backends.rknn_toolkit`",
)
SIM = BackendOptions(device="SIM")
INT8_MIN_COSINE = 0.995  # the README's INT8 budget (--min-cosine), written here


def _rknn_description(data: bytes) -> dict[str, Any]:
    """The JSON graph description rknn-toolkit2 writes into a .rknn file (target platform, tensors)."""
    start = data.index(b'{"connection"')
    description, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", "replace"))
    return dict(description)


@needs_toolkit
class TestRknn(TargetTemplate):
    target = "rknn"
    precisions: ClassVar[tuple[str, ...]] = ("fp16",)
    backend = "rknn"
    backend_options = SIM

    @pytest.fixture(scope="class")
    @classmethod
    def bundle(cls, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
        out = tmp_path_factory.mktemp("export-rknn") / "b.edgeclip"
        export_bundle(tiny_checkpoint, out, targets=["rknn"], precision="fp16",
                      labels={"default": (TINY_CLASSES, None)}, options={"rknn_platform": "rk3588"})
        return Bundle.open(out)

    def check_target_specific(self, bundle: Bundle, artifact) -> None:  # type: ignore[no-untyped-def]
        assert [Path(f).name for f in artifact.files] == ["model.rknn", "model.onnx"]
        env = artifact.environment.details
        assert env["rknn_platform"] == "rk3588" and env["rknn-toolkit2"] and env["verified_on"] == "simulator"
        assert env["input_shape"][0] == 1
        assert list(artifact.inputs[0].shape) == env["input_shape"] and artifact.outputs[0].shape[0] == 1
        # the .rknn file itself: built for the platform, tensors and shapes its manifest entry records
        saved = _rknn_description((bundle.root / artifact.main_file).read_bytes())
        assert saved["target_platform"] == [env["rknn_platform"]]
        tensors = {t["url"]: t["size"] for t in saved["norm_tensor"]}
        assert tensors == {s.name: list(s.shape) for s in (*artifact.inputs, *artifact.outputs)}
        assert "simulator" in artifact.validation.checked_with
        assert (bundle.root / artifact.main_file).read_bytes()[:4] == b"RKNN"

    def test_simulator_gives_the_same_top1_as_onnx(self, bundle: Bundle, tiny_checkpoint: Path) -> None:
        export_bundle(tiny_checkpoint, bundle.root, targets=["onnx"], labels={"default": (TINY_CLASSES, None)})
        images = [ShapesDataset("heldout", 24, 32)[i].image for i in range(24)]
        rknn = ZeroShotClassifier.load(bundle.root, backend="rknn", precision="fp16", device="SIM")
        ort = ZeroShotClassifier.load(bundle.root, backend="onnxruntime", precision="fp32")
        assert [r.label for r in rknn.classify(images)] == [r.label for r in ort.classify(images)]
        a, b = rknn.embed_images(images)[0], ort.embed_images(images)[0]
        assert float(np.min((a * b).sum(1))) >= 0.999  # the README's fp16 parity


@needs_toolkit
@pytest.mark.slow
@pytest.mark.parametrize(("method", "algorithm"), [("minmax", "normal"), ("entropy", "kl_divergence")])
def test_int8_is_calibrated_guarded_and_runs_on_the_simulator(method: str, algorithm: str, tiny_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    """Each --calib-method: RKNN's hybrid step 2 (the guard's rebuilds, the simulator's) must repeat
    step 1's quantization config, or the toolkit refuses it."""
    out = tmp_path / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["rknn"], precision="int8", labels={"default": (TINY_CLASSES, None)},
                  options={"rknn_platform": "rk3588", "calib": "builtin:shapes", "calib_method": method})
    bundle = Bundle.open(out)
    for a in bundle.manifest.artifacts:
        held = a.validation.heldout
        assert a.validation.passed is True and held is not None and held.cosine_min >= INT8_MIN_COSINE
        assert a.calibration is not None and a.calibration.details["rknn_algorithm"] == algorithm
        assert sorted(Path(f).name for f in a.files) == ["model.data", "model.model", "model.quantization.cfg",
                                                          "model.rknn"]
    images = [ShapesDataset("heldout", 12, 32)[i].image for i in range(12)]
    assert len(ZeroShotClassifier.load(out, backend="rknn", precision="int8", device="SIM").classify(images)) == 12


def test_an_unknown_or_missing_platform_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="unknown RKNN platform 'rk3399'") as e:
        export_bundle(tiny_checkpoint, tmp_path / "a", targets=["rknn"], options={"rknn_platform": "rk3399"})
    assert "rk3588" in (e.value.fix or "")
    with pytest.raises(ConfigError, match="needs the board's chip") as e2:
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["rknn"])
    assert "--rknn-platform" in (e2.value.fix or "")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_missing_toolkit_environment_says_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           tiny_checkpoint: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(MissingDependencyError, match="RKNN toolkit environment is not available") as e:
        toolkit_python()
    assert "python -m edgeclip.runtime.backends.rknn_toolkit" in (e.value.fix or "") and ENV_VAR in (e.value.fix or "")
    with pytest.raises(MissingDependencyError):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["rknn"], encoders=["image"],
                      options={"rknn_platform": "rk3588"})
    assert not (tmp_path / "b").exists()


@pytest.mark.rknn
def test_rknnlite_runs_the_bundle_on_the_board() -> None:
    """On a Rockchip board with rknn-toolkit-lite2: EDGECLIP_RKNN_BUNDLE names a bundle exported for it."""
    bundle = os.environ.get("EDGECLIP_RKNN_BUNDLE")
    pytest.importorskip("rknnlite", reason="needs a Rockchip board with rknn-toolkit-lite2 (the NPU)")
    if not bundle:
        pytest.skip("set EDGECLIP_RKNN_BUNDLE to a bundle exported with --target rknn for this board")
    images = [ShapesDataset("heldout", 12, 32)[i].image for i in range(12)]
    on_npu = ZeroShotClassifier.load(bundle, backend="rknn", device="AUTO")
    assert len(on_npu.classify(images)) == 12


@pytest.mark.slow
def test_create_env_builds_a_working_toolkit_environment(tmp_path: Path) -> None:
    python = create_env(tmp_path / "env")
    assert python.is_file()
    assert create_env(tmp_path / "env") == python  # cached: the second call does nothing


def test_float_layers_go_into_rknn_custom_quantize_layers() -> None:
    from edgeclip.export.rknn import with_float_layers

    cfg = "custom_quantize_layers: {}\nquantize_parameters:\n    a#1:\n        dtype: int8\n"
    assert with_float_layers(cfg, []) == cfg
    out = with_float_layers(cfg, ["node_layer_norm#1", "matmul_1_sdpa"])
    assert out.startswith('custom_quantize_layers:\n    "node_layer_norm#1": float16\n    "matmul_1_sdpa": float16\n')
    assert out.endswith("quantize_parameters:\n    a#1:\n        dtype: int8\n")


@needs_toolkit
def test_the_worker_runs_only_its_own_ops_and_reports_toolkit_errors(tmp_path: Path) -> None:
    from edgeclip.errors import EdgeclipError
    from edgeclip.runtime.backends.rknn_toolkit import ToolkitWorker

    with ToolkitWorker(toolkit_python()) as worker:
        assert worker.call("version")["rknn-toolkit2"].startswith("2.")
        with pytest.raises(EdgeclipError, match="unknown op '__init__'"):
            worker.call("__init__")
        with pytest.raises(EdgeclipError, match="no model was built"):
            worker.infer(np.zeros((1, 3), np.float32))
        assert worker.call("version")  # an error leaves the worker serving
