"""SigLIP through the existing export driver: ONNX and OpenVINO, fp32 and int8, validated against
torch by `export_bundle`; the fp32 artifacts checked against transformers itself (issue: 1e-4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeclip.bundle import Bundle
from edgeclip.export.driver import export_bundle
from edgeclip.model.importer import import_weights
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.classifier import load_encoder
from edgeclip.runtime.tokenizer import TextTokenizer
from tests.model.siglip_fixtures import make_hf_dir

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")

TOL = 1e-4  # the bound for ONNX and OpenVINO (f32 hint) against transformers
CALIB = {"calib": "builtin:shapes", "calib_size": 32}
TEXTS = ["a photo of a red circle.", "Two CATS, on a sofa!", "東京 фото", "x " * 80]


@pytest.fixture(scope="module", autouse=True)
def calib_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECLIP_CACHE", str(tmp_path_factory.mktemp("calib-cache")))
        yield


def _export(root: Path, name: str, precisions: tuple[str, ...]) -> tuple[Any, Bundle]:
    hf, src = make_hf_dir(root / "hf", name)
    import_weights(src, root / "ckpt")
    out = root / "b.edgeclip"
    for precision in precisions:
        export_bundle(root / "ckpt", out, targets=("onnx", "openvino"), precision=precision, options=CALIB)
    return hf, Bundle.open(out)


# the SigLIP 2-shaped config (Gemma tokenizer, patch remainder) by default; a second one when slow
@pytest.fixture(scope="module", params=["siglip2-p14-remainder",
                                        pytest.param("p16-w48-3heads", marks=pytest.mark.slow)])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Bundle]:
    return _export(tmp_path_factory.mktemp(request.param), request.param, ("fp32",))


def _run(bundle: Bundle, encoder: str, backend: str, precision: str, x: np.ndarray) -> np.ndarray:
    enc = load_encoder(bundle, encoder, backend, precision, BackendOptions(threads=2, precision_hint="f32"))
    return enc(x)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_artifacts_match_transformers(exported: tuple[Any, Bundle], backend: str) -> None:
    hf, bundle = exported
    m = bundle.manifest
    s = m.preprocess.image_size
    pixels = np.random.default_rng(0).normal(size=(3, 3, s, s)).astype(np.float32)
    ids = TextTokenizer(bundle.tokenizer_path(), m.tokenizer)(TEXTS)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels))
    img = _run(bundle, "image", backend, "fp32", pixels)
    txt = _run(bundle, "text", backend, "fp32", ids)
    assert np.abs(img - ref.image_embeds.numpy()).max() < TOL
    assert np.abs(txt - ref.text_embeds.numpy()).max() < TOL


@pytest.mark.slow
def test_int8_artifacts_pass_validation(tmp_path: Path) -> None:
    """INT8 (static, calibrated on builtin:shapes) for both towers on both targets: export_bundle
    validates each against torch (the guard's cosine budget) or raises."""
    _, bundle = _export(tmp_path, "siglip2-p14-remainder", ("fp32", "int8"))
    keys = {a.key for a in bundle.manifest.artifacts}
    assert keys == {f"{e}/{t}-{p}" for e in ("image", "text") for t in ("onnx", "openvino") for p in ("fp32", "int8")}
    for a in bundle.manifest.artifacts:
        assert a.validation, a.key
    assert bundle.manifest.model_config["scoring"]["rule"] == "sigmoid"


@pytest.mark.parametrize("encoder", ["image", "text"])
def test_onnx_graphs_have_no_dynamic_shape_ops(exported: tuple[Any, Bundle], encoder: str) -> None:
    """The MAP head's query is batch-independent and every reshape uses -1 for the batch: no
    Shape/Expand/Tile chain computes the batch size at run time; only the batch dim is symbolic."""
    _, bundle = exported
    (a,) = bundle.manifest.find(encoder, "onnx", "fp32")
    graph = onnx.load(str(bundle.artifact_path(a))).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Shape", "Expand", "Tile", "ConstantOfShape", "Range"}, sorted(ops)
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == list(a.inputs[0].shape[1:])
