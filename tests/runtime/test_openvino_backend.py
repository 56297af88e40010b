"""The OpenVINO backend runs a batch of 1 on a compiled copy with static shapes (the CPU plugin's
dynamic-batch bookkeeping costs about 0.4 ms a call); the first larger batch compiles the dynamic
model, and each keeps running the batches it was compiled for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.bundle import Artifact, Bundle
from edgeclip.runtime.backends.base import BackendOptions

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def backend(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Artifact]:
    from edgeclip.export.driver import export_bundle
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    out = tmp_path_factory.mktemp("ov-static") / "ov.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["openvino"], precision="fp32", encoders=["image"])
    b = Bundle.open(out)
    art = b.manifest.find("image", "openvino", "fp32")[0]
    return OpenVinoBackend(b.artifact_path(art), art, BackendOptions(threads=1, precision_hint="f32")), art


def _pixels(art: Artifact, n: int) -> dict[str, np.ndarray]:
    spec = art.inputs[0]
    shape = [n, *(int(d) for d in spec.shape[1:])]
    return {spec.name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}


def test_batch_of_one_runs_static_and_batches_compile_the_dynamic_model_on_first_use(
    backend: tuple[Any, Artifact],
) -> None:
    ov_backend, art = backend
    x = _pixels(art, 3)
    name, out = art.inputs[0].name, art.outputs[0].name
    singles = np.concatenate([ov_backend.infer({name: x[name][i : i + 1]})[out] for i in range(3)])
    shape = ov_backend.compiled.inputs[0].get_partial_shape()
    assert shape.is_static and shape[0].get_length() == 1  # what ran the single images
    assert ov_backend._batched is None  # nothing else was compiled for them
    batched = ov_backend.infer(x)[out]
    assert ov_backend._batched is not None and ov_backend._batched.inputs[0].get_partial_shape()[0].is_dynamic
    assert ov_backend.compiled is ov_backend._single  # a batch of 1 still runs static
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    np.testing.assert_allclose(ov_backend.infer({name: x[name][:1]})[out], singles[:1], atol=1e-5)
