"""Gaps found by breaking the export layer on purpose (a review that made each bug a real one would
make, and kept the test that caught it): the validation gate sees embedding length as well as
direction, and what the manifest records about each saved artifact is what the file holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgeclip.export.openvino as openvino_target
import edgeclip.export.reference as reference
from edgeclip.errors import ValidationError
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import encoder_module
from edgeclip.export.validate import validate
from edgeclip.model.build import build_model

NOT_UNIT = "another length than the torch reference.*not L2-normalised.*not registered"


def _tower_only(make):  # type: ignore[no-untyped-def]
    """A real bug: the image tower exported without the encoder's final L2 normalisation."""
    return lambda encoder, model: make(encoder, model).visual if encoder == "image" else make(encoder, model)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8w"])
def test_the_gate_refuses_embeddings_in_the_right_direction_at_the_wrong_length(precision: str) -> None:
    torch.manual_seed(0)
    encoder = encoder_module("image", build_model("test-tiny"))
    probes = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = encoder.visual(probes).numpy()  # the tower's own output: every cosine is 1

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return encoder.visual(torch.from_numpy(x)).numpy()

    @torch.no_grad()
    def normalised(x: np.ndarray) -> np.ndarray:
        return encoder(torch.from_numpy(x)).numpy()

    unit = validate(encoder, probes, normalised, precision, "unit")
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=0.2), "the tower's raw output is not unit length"
    assert unit["passed"] and unit["norm_max_dev"] < 1e-5
    with pytest.raises(ValidationError, match=NOT_UNIT) as e:
        validate(encoder, probes, run, precision, "image/x-" + precision)
    assert e.value.fix


@pytest.mark.parametrize(("target", "module", "attr"), [
    ("onnx", reference, "export_module"),
    ("openvino", openvino_target, "openvino_module"),
])
def test_an_artifact_without_the_final_normalisation_is_not_registered(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, module: object, attr: str
) -> None:
    monkeypatch.setattr(module, attr, _tower_only(getattr(module, attr)))
    out = tmp_path / "b.edgeclip"
    with pytest.raises(ValidationError, match=NOT_UNIT):
        export_bundle(tiny_checkpoint, out, targets=[target], encoders=["image"])
    assert not out.exists() and not list(tmp_path.iterdir())

