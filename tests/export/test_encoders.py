"""Exports of a FastViT (MobileCLIP) model use the inference form, and the manifest says so; image
artifacts with uint8 input normalise inside the graph and match float-input ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from edgeclip.bundle import Bundle, PreprocessConfig, TensorSpec
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import ConfigError
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import export_module, uint8_pixels
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import ImageEncoder, TextEncoder
from edgeclip.model.fastvit import Reparameterizable
from edgeclip.model.importer import import_weights
from edgeclip.model.reparameterize import reparameterize
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeclip.runtime.backends.openvino import OpenVinoBackend
from edgeclip.runtime.classifier import load_encoder
from edgeclip.runtime.preprocess import load_image, normalize, resize_crop
from edgeclip.runtime.similarity import cosine_rows
from edgeclip.runtime.tokenizer import TextTokenizer
from tests.conftest import README_PARITY
from tests.export.test_guard import README_MIN_COSINE
from tests.model.test_import_mobileclip import _importable, open_clip_names
from tests.model.test_reparameterize import _images, _perturbed, _tiny

CALIB = {"calib": "builtin:shapes", "calib_size": 64}


@pytest.fixture(scope="module")
def mci_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A perturbed tiny MCi model imported from open_clip's layout (OpenAI tokenizer, 256 px)."""
    tmp = tmp_path_factory.mktemp("mci")
    model = _perturbed(_importable(_tiny()))
    save_file(open_clip_names(model.state_dict()), str(tmp / "open_clip_model.safetensors"))
    return import_weights(tmp / "open_clip_model.safetensors", tmp / "ckpt").path


@pytest.fixture(scope="module")
def mci_bundle(mci_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("bundle") / "b"
    export_bundle(mci_checkpoint, out, targets=["onnx", "openvino"], precision="fp32", encoders=["image"])
    export_bundle(mci_checkpoint, out, targets=["onnx"], precision="fp32", encoders=["text"])  # joins the bundle
    return Bundle.open(out)


def test_export_module_is_the_inference_form(mci_checkpoint: Path) -> None:
    model, _ = load_checkpoint(mci_checkpoint)
    module = export_module("image", model)
    assert not [m for m in module.modules() if isinstance(m, Reparameterizable)]
    assert any(isinstance(m, Reparameterizable) for m in model.visual.modules())  # the checkpoint's is untouched


def test_manifest_records_the_reparameterization(mci_bundle: Bundle, mci_checkpoint: Path) -> None:
    _, info = load_checkpoint(mci_checkpoint)
    assert info.model.vision_cfg.fastvit is not None and not info.model.vision_cfg.fastvit.reparameterized
    assert mci_bundle.manifest.model_config["vision_cfg"]["fastvit"]["reparameterized"] is True


def test_onnx_graph_holds_merged_convs(mci_bundle: Bundle, mci_checkpoint: Path) -> None:
    model, _ = load_checkpoint(mci_checkpoint)
    a = mci_bundle.manifest.find("image", "onnx", "fp32")[0]
    ops = [n.op_type for n in onnx.load(str(mci_bundle.artifact_path(a))).graph.node]
    def convs(m: torch.nn.Module) -> int:
        return sum(isinstance(c, torch.nn.Conv2d) for c in m.modules())

    assert ops.count("Conv") == convs(reparameterize(model).visual) < convs(model.visual)
    assert "BatchNormalization" not in ops or ops.count("BatchNormalization") == 1  # the one before attention


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_artifacts_match_the_training_form(mci_bundle: Bundle, mci_checkpoint: Path, target: str) -> None:
    model, _ = load_checkpoint(mci_checkpoint)
    pixels = _images(256)
    with torch.no_grad():
        ref = ImageEncoder(model)(pixels).numpy()
    a = mci_bundle.manifest.find("image", target, "fp32")[0]
    opts = BackendOptions(threads=2, precision_hint="f32" if target == "openvino" else None)
    backend = (OnnxRuntimeBackend if target == "onnx" else OpenVinoBackend)(mci_bundle.artifact_path(a), a, opts)
    got = backend.infer({"pixel_values": pixels.numpy()})["image_embeds"]
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= README_PARITY["fp32"]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_bidirectional_text_export_matches_torch(mci_bundle: Bundle, mci_checkpoint: Path) -> None:
    model, info = load_checkpoint(mci_checkpoint)
    assert model.cfg.text_cfg.no_causal_mask
    ids = TextTokenizer(info.tokenizer_path, info.tokenizer)(["a photo of a dog.", "two red squares"])
    with torch.no_grad():
        ref = TextEncoder(model)(torch.from_numpy(ids)).numpy()
    a = mci_bundle.manifest.find("text", "onnx", "fp32")[0]
    got = OnnxRuntimeBackend(mci_bundle.artifact_path(a), a, BackendOptions(threads=2)).infer({"input_ids": ids})
    np.testing.assert_allclose(got["text_embeds"], ref, atol=1e-5)


@pytest.mark.slow
def test_int8_passes_the_guard(mci_checkpoint: Path, tmp_path: Path) -> None:
    r = export_bundle(mci_checkpoint, tmp_path / "b", targets=["onnx"], precision="int8", encoders=["image"],
                      options=CALIB)
    c = r.artifacts[0].calibration
    assert c is not None and c.measured.cosine_min >= README_MIN_COSINE


# ---------------------------------------------------------------------------------------------
# uint8 image input: normalisation inside the graph (onnx: a prologue; OpenVINO: PrePostProcessor)

UINT8 = {"image_input": "uint8"}


@pytest.fixture(scope="module")
def image_input_bundles(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle]:
    root = tmp_path_factory.mktemp("image-input")
    plain, uint8 = root / "float32.edgeclip", root / "uint8.edgeclip"
    export_bundle(tiny_checkpoint, plain, targets=["onnx", "openvino"], encoders=["image"])
    export_bundle(tiny_checkpoint, uint8, targets=["onnx", "openvino"], encoders=["image"], options=UINT8)
    export_bundle(tiny_checkpoint, uint8, targets=["openvino"], precision="int8", encoders=["image"],
                  options={**UINT8, **CALIB})
    return Bundle.open(plain), Bundle.open(uint8)


def _resized(cfg: PreprocessConfig, n: int = 12) -> np.ndarray:
    """Held-out images at an odd size, resized and cropped as the runtime does: uint8 [N, S, S, 3]."""
    shapes = ShapesDataset("heldout", n, cfg.image_size + 13, seed=5)
    return np.stack([np.asarray(resize_crop(load_image(shapes[i].image), cfg)) for i in range(n)])


def test_uint8_input_is_recorded_and_validated_on_uint8_pixels(image_input_bundles: tuple[Bundle, Bundle]) -> None:
    _, bundle = image_input_bundles
    s = bundle.manifest.preprocess.image_size
    assert {a.key for a in bundle.manifest.artifacts} == {"image/onnx-fp32", "image/openvino-fp32",
                                                         "image/openvino-int8"}
    for a in bundle.manifest.artifacts:
        assert a.inputs[0] == TensorSpec("pixel_values", "uint8", ("batch_size", s, s, 3), layout="NHWC"), a.key
        assert a.validation.passed and a.validation.checked_with, a.key
        if a.precision == "fp32":
            assert a.validation.cosine_min is not None and a.validation.cosine_min >= README_PARITY["fp32"], a.key
        else:  # the accuracy guard's budget, measured again on the saved uint8 artifact
            assert a.validation.heldout is not None and a.validation.heldout.cosine_min >= README_MIN_COSINE
    onnx_input = onnx.load(str(bundle.artifact_path(bundle.manifest.find("image", "onnx")[0]))).graph.input[0]
    assert onnx_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.mark.parametrize(("backend", "precision"), [("onnxruntime", "fp32"), ("openvino", "fp32")])
def test_uint8_artifact_matches_the_float_artifact_on_the_same_pixels(
    image_input_bundles: tuple[Bundle, Bundle], backend: str, precision: str
) -> None:
    plain, uint8 = image_input_bundles
    cfg = plain.manifest.preprocess
    pixels = _resized(cfg)
    options = BackendOptions(precision_hint="f32")
    want = load_encoder(plain, "image", backend, precision, options)(np.stack([normalize(p, cfg) for p in pixels]))
    got = load_encoder(uint8, "image", backend, precision, options)(pixels)
    assert float(np.min(cosine_rows(want, got))) >= README_PARITY["fp32"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_classifier_feeds_uint8_artifacts_their_pixels(
    image_input_bundles: tuple[Bundle, Bundle], backend: str
) -> None:
    """The runtime hands a uint8-input artifact the resized pixels (no numpy normalisation) and
    gets the embeddings the float-input artifact gives for the same images."""
    plain, uint8 = image_input_bundles
    images = list(ShapesDataset("heldout", 6, plain.manifest.preprocess.image_size + 13, seed=6))
    kw = {"backend": backend, "precision": "fp32", "labels": None, "precision_hint": "f32"}
    want, _ = ZeroShotClassifier.load(plain.root, **kw).embed_images([s.image for s in images])
    got, errors = ZeroShotClassifier.load(uint8.root, **kw).embed_images([s.image for s in images])
    assert errors == [None] * len(images)
    assert float(np.min(cosine_rows(want, got))) >= README_PARITY["fp32"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_uint8_input_refuses_float_pixels_with_a_typed_error(
    image_input_bundles: tuple[Bundle, Bundle], backend: str
) -> None:
    _, uint8 = image_input_bundles
    enc = load_encoder(uint8, "image", backend, "fp32", BackendOptions())
    floats = np.stack([normalize(p, uint8.manifest.preprocess) for p in _resized(uint8.manifest.preprocess, 2)])
    with pytest.raises(ConfigError, match="takes uint8 pixels") as e:
        enc(floats)
    assert e.value.fix


def test_uint8_pixels_undo_normalisation_exactly() -> None:
    cfg = PreprocessConfig(image_size=8)
    rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(uint8_pixels(np.stack([normalize(p, cfg) for p in rgb]), cfg), rgb)
