"""Review of the OpenVINO backend's two compiled copies (static batch 1, dynamic batches): several
threads at once, the copy a single image runs on once a batch has run, and a wrongly shaped input.

With INFERENCE_NUM_THREADS=1 (threads=1), OpenVINO 2026.4's CPU plugin does not check an input's
shape against a dynamic-batch model: [2, 3, 64, 64] into a [?, 3, 32, 32] model returned an empty
[0, D] result (or, after a good call, two rows of garbage) with no error."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.bundle import Artifact, Bundle
from edgeclip.errors import EdgeclipError
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.classifier import Encoder

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ov_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from edgeclip.export.driver import export_bundle

    out = tmp_path_factory.mktemp("ov-review") / "ov.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["openvino"], precision="fp32", encoders=["image"])
    return Bundle.open(out)


def _image(bundle: Bundle) -> tuple[Any, Artifact]:
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    art = bundle.manifest.find("image", "openvino", "fp32")[0]
    return OpenVinoBackend(bundle.artifact_path(art), art, BackendOptions(threads=1, precision_hint="f32")), art


def _pixels(art: Artifact, n: int) -> np.ndarray:
    shape = [n, *(int(d) for d in art.inputs[0].shape[1:])]
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def test_threads_running_single_images_and_batches_at_once_get_their_own_results(ov_bundle: Bundle) -> None:
    backend, art = _image(ov_bundle)
    name, out = art.inputs[0].name, art.outputs[0].name
    x = _pixels(art, 32)
    expected = np.concatenate([backend.infer({name: x[i : i + 1]})[out] for i in range(len(x))])
    backend, _ = _image(ov_bundle)  # a fresh one: the dynamic copy is compiled while threads run

    def run(i: int) -> float:
        n = (1, 32, 1, 7, 1, 2)[i % 6]
        start = (i * 5) % (len(x) - n + 1)
        got = backend.infer({name: x[start : start + n]})[out]
        assert got.shape == (n, expected.shape[1])
        return float(np.abs(got - expected[start : start + n]).max())

    with ThreadPoolExecutor(8) as pool:
        worst = max(pool.map(run, range(240)))
    assert worst < 1e-5


def test_one_image_runs_on_the_static_copy_after_a_batch_has_run(ov_bundle: Bundle) -> None:
    backend, art = _image(ov_bundle)
    backend.infer({art.inputs[0].name: _pixels(art, 3)})  # compiles the dynamic copy first
    backend.infer({art.inputs[0].name: _pixels(art, 1)})
    ran = backend._request(1).get_compiled_model().inputs[0].get_partial_shape()
    assert ran.is_static and ran[0].get_length() == 1


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 31, 31), (2, 3, 32, 32, 1), (3, 32, 32)])
def test_a_wrongly_shaped_input_is_a_typed_error_never_a_result(ov_bundle: Bundle, shape: tuple[int, ...]) -> None:
    backend, art = _image(ov_bundle)
    encoder = Encoder(backend, art, "test")
    encoder(_pixels(art, 2))  # a good call first: the plugin then ran the bad one on the old buffers
    with pytest.raises(EdgeclipError, match="shape"):
        encoder(np.zeros(shape, np.float32))
