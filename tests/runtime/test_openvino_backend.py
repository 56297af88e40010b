"""The OpenVINO backend runs one image on a compiled copy with static shapes (the CPU plugin's
dynamic-batch bookkeeping costs about 0.4 ms a call); the first larger batch compiles the dynamic
model, and each keeps running the batches it was compiled for. Text towers keep the dynamic model
alone (prompts come in batches: a second copy would cost memory and a compile in the labels pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.bundle import Artifact, Bundle
from edgeclip.runtime.backends.base import BackendOptions

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ov_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from edgeclip.export.driver import export_bundle

    out = tmp_path_factory.mktemp("ov-static") / "ov.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["openvino"], precision="fp32")
    return Bundle.open(out)


def _open(bundle: Bundle, encoder: str) -> tuple[Any, Artifact]:
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    art = bundle.manifest.find(encoder, "openvino", "fp32")[0]
    return OpenVinoBackend(bundle.artifact_path(art), art, BackendOptions(threads=1, precision_hint="f32")), art


def test_one_image_runs_static_and_batches_compile_the_dynamic_model_on_first_use(ov_bundle: Bundle) -> None:
    backend, art = _open(ov_bundle, "image")
    spec, out = art.inputs[0], art.outputs[0].name
    x = np.random.default_rng(0).standard_normal([3, *(int(d) for d in spec.shape[1:])], dtype=np.float32)
    singles = np.concatenate([backend.infer({spec.name: x[i : i + 1]})[out] for i in range(3)])
    shape = backend.compiled.inputs[0].get_partial_shape()
    assert shape.is_static and shape[0].get_length() == 1  # what ran the single images
    compiled_before = backend._batched  # nothing else was compiled for them
    batched = backend.infer({spec.name: x})[out]
    assert compiled_before is None and backend._batched.inputs[0].get_partial_shape()[0].is_dynamic
    assert backend.compiled is backend._single  # one image still runs static
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    np.testing.assert_allclose(backend.infer({spec.name: x[:1]})[out], singles[:1], atol=1e-5)


def test_text_towers_compile_the_dynamic_model_alone(ov_bundle: Bundle) -> None:
    backend, art = _open(ov_bundle, "text")
    assert backend._single is None
    assert backend.compiled.inputs[0].get_partial_shape()[0].is_dynamic
    ids = np.ones((1, int(art.inputs[0].shape[1])), dtype=np.int64)
    assert backend.infer({art.inputs[0].name: ids})[art.outputs[0].name].shape[0] == 1
    assert backend._single is None  # one prompt ran on the dynamic model
