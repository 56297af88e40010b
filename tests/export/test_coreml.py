"""CoreML target: spec checks everywhere, numerics on macOS only (Core ML predict needs it)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from edgeclip.bundle import Bundle
from edgeclip.errors import ConfigError
from edgeclip.export.coreml import parse_options
from edgeclip.export.driver import export_bundle
from edgeclip.runtime.backends.coreml import CoreMLBackend
from tests.conftest import README_PARITY, README_WEIGHT_ONLY_PARITY
from tests.export.target_template import TargetTemplate

MACOS = sys.platform == "darwin"


def _load_spec(bundle: Bundle, artifact: Any) -> Any:
    """The saved spec read with coremltools itself, independent of the exporter's own inspection."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)  # "native lib missing" off macOS
    import coremltools as ct

    return ct.utils.load_spec(str(bundle.root / artifact.path / "model.mlpackage"))


class TestCoreML(TargetTemplate):
    target = "coreml"
    precisions: ClassVar[tuple[str, ...]] = ("fp16", "int8w")
    runs_here = MACOS
    backend = "coreml"

    def check_target_specific(self, bundle: Bundle, artifact) -> None:  # type: ignore[no-untyped-def]
        pkg = bundle.root / artifact.path / "model.mlpackage"
        files = list(artifact.files)
        # the backend opens the parent of the first file; every file of the package is hashed
        assert files[0] == f"{artifact.path}/model.mlpackage/Manifest.json"
        assert sorted(files) == sorted(p.relative_to(bundle.root).as_posix() for p in pkg.rglob("*") if p.is_file())
        env = artifact.environment
        assert env.details["deployment_target"] == "iOS16" and env.details["conversion"] == "torch.export"
        assert env.details["batch"] == "fixed" and env.details["compute_precision"] == "fp16"
        assert (env.details["compression"] is None) == (artifact.precision == "fp16")
        if not MACOS:
            assert artifact.validation.passed is None
        facts = artifact.validation.details["spec"]
        assert facts["model_type"] == "mlProgram" and facts["specification_version"] == 7
        assert facts["float_weights"]["FLOAT32"] == 0 and facts["weight_file_bytes"] > 0
        assert (facts["int8_weights"] > 0) == (artifact.precision == "int8w")

        spec = _load_spec(bundle, artifact)
        assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion == 7
        (inp,) = spec.description.input
        array = inp.type.multiArrayType
        assert not array.shapeRange.sizeRanges, "fixed batch by default"
        if artifact.encoder == "text":
            assert inp.name == "input_ids" and array.dataType == array.INT32 and list(array.shape) == [1, 16]
            assert artifact.inputs[0].dtype == "int32"
        else:
            assert inp.name == "pixel_values" and array.dataType == array.FLOAT32
            assert list(array.shape) == [1, 3, 32, 32] and artifact.inputs[0].shape == (1, 3, 32, 32)
        (out,) = spec.description.output
        assert out.name == artifact.outputs[0].name and out.type.multiArrayType.dataType == array.FLOAT32


def test_fp32_and_palettized_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    for precision in ("fp32", "palette6", "palette4"):
        export_bundle(tiny_checkpoint, out, targets=["coreml"], precision=precision, encoders=["image"])
    facts = {a.precision: a.validation.details["spec"] for a in Bundle.open(out).manifest.artifacts}
    assert facts["fp32"]["float_weights"]["FLOAT16"] == 0 and facts["fp32"]["float_weights"]["FLOAT32"] > 0
    assert facts["palette6"]["palettized_weights"] > 0 and facts["palette6"]["palette_sizes"] == [64]
    assert facts["palette4"]["palette_sizes"] == [16]
    sizes = {p: f["weight_file_bytes"] for p, f in facts.items()}
    assert sizes["palette4"] < sizes["palette6"] < sizes["fp32"]


def test_flexible_batch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = export_bundle(tiny_checkpoint, tmp_path / "b", targets=["coreml"], precision="fp16",
                           options={"coreml_flexible_batch": 8})
    for a in result.artifacts:
        assert a.environment.details["batch"] == "flexible" and a.environment.max_batch == 8
        assert a.inputs[0].shape[0] == "batch_size"
        assert a.validation.details["spec"]["inputs"][0]["range"][0] == [1, 8]
    on = parse_options({"coreml_flexible_batch": True})
    assert on.max_batch is not None and on.max_batch >= 2


def test_image_input(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = export_bundle(tiny_checkpoint, tmp_path / "b", targets=["coreml"], precision="fp16",
                           encoders=["image"], options={"coreml_image_input": True})
    (a,) = result.artifacts
    assert a.validation.details["spec"]["inputs"][0] == {
        "name": "pixel_values", "type": "image", "color": "RGB", "width": 32, "height": 32,
    }
    image = a.environment.image_input
    assert image["scale"] == pytest.approx(1 / 255) and image["bias"] == [0.0, 0.0, 0.0]
    assert len(image["mean"]) == len(image["std"]) == 3


def test_image_input_normalisation_is_exact(tiny_checkpoint: Path) -> None:
    """What the image-input model computes from 0..1 RGB equals the encoder on normalised pixels."""
    from edgeclip.export.coreml import _PixelEncoder
    from edgeclip.model.checkpoint import load_checkpoint
    from edgeclip.model.clip import ImageEncoder

    model, info = load_checkpoint(tiny_checkpoint)
    p = info.preprocess
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)
    with torch.no_grad():
        wrapped = _PixelEncoder(ImageEncoder(model).eval(), p.mean, p.std)(rgb)
        direct = ImageEncoder(model).eval()((rgb - mean) / std)
    torch.testing.assert_close(wrapped, direct)


def test_deployment_target(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = export_bundle(tiny_checkpoint, tmp_path / "b", targets=["coreml"], precision="int8w",
                           encoders=["text"], options={"coreml_target": "ios17"})
    (a,) = result.artifacts
    assert a.environment.details["deployment_target"] == "iOS17"
    assert a.validation.details["spec"]["specification_version"] == 8
    assert parse_options({"coreml_target": "macOS13"}).spec_version == 7  # same Core ML as iOS16


@pytest.mark.parametrize("value, match", [
    ("iOS15", "too old"), ("macOS12", "too old"), ("iOS99", "unknown CoreML deployment target"),
])
def test_bad_deployment_target_is_a_config_error(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        parse_options({"coreml_target": value})
    assert e.value.fix and "iOS16" in e.value.fix


def test_bad_target_fails_the_export_and_writes_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="too old"):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["coreml"], precision="fp16",
                      options={"coreml_target": "iOS15"})
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="cannot be combined"):
        export_bundle(tiny_checkpoint, tmp_path / "b", targets=["coreml"], precision="fp16", encoders=["image"],
                      options={"coreml_image_input": True, "coreml_flexible_batch": True})
    with pytest.raises(ConfigError, match="maximum batch"):
        parse_options({"coreml_flexible_batch": 1})


@pytest.mark.skipif(MACOS, reason="checks the off-macOS refusal")
def test_backend_is_unavailable_off_macos(tmp_path: Path) -> None:
    assert CoreMLBackend.available() is False
    with pytest.raises(ConfigError, match="only on macOS"):
        CoreMLBackend(tmp_path / "model.mlpackage" / "Manifest.json", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("precision, options", [
    ("fp16", {}), ("int8w", {}), ("fp16", {"coreml_image_input": True}), ("fp32", {"coreml_flexible_batch": True}),
])
@pytest.mark.macos
@pytest.mark.skipif(not MACOS, reason="Core ML prediction needs macOS")
def test_predictions_match_torch_on_macos(tiny_checkpoint: Path, tmp_path: Path, precision: str,
                                          options: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from edgeclip.model.checkpoint import load_checkpoint
    from edgeclip.model.clip import ImageEncoder

    result = export_bundle(tiny_checkpoint, tmp_path / "b", targets=["coreml"], precision=precision,
                           encoders=["image"], options=options)
    (a,) = result.artifacts
    assert a.validation.passed is True
    bundle = Bundle.open(tmp_path / "b")
    backend = CoreMLBackend(bundle.artifact_path(a), a)
    model, _ = load_checkpoint(tiny_checkpoint)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = ImageEncoder(model).eval()(x).numpy()
    with ThreadPoolExecutor(4) as pool:  # predict is guarded by a lock: same rows from any thread
        rows = list(pool.map(lambda i: backend.infer({"pixel_values": x[i : i + 1].numpy()})["image_embeds"], range(5)))
    for got in (np.concatenate(rows), backend.infer({"pixel_values": x.numpy()})["image_embeds"]):
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= README_PARITY.get(precision, README_WEIGHT_ONLY_PARITY)
