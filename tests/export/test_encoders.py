"""Exports of a FastViT (MobileCLIP) model use the inference form, and the manifest says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from edgeclip.bundle import Bundle
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import export_module
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import ImageEncoder, TextEncoder
from edgeclip.model.fastvit import Reparameterizable
from edgeclip.model.importer import import_weights
from edgeclip.model.reparameterize import reparameterize
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeclip.runtime.backends.openvino import OpenVinoBackend
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
