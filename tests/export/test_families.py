"""Every target for the SigLIP and MCi (MobileCLIP) families: the test-tiny SigLIP and test-tiny MCi
checkpoints exported to each target that this machine can check, validated against torch.

What runs here is run: the driver's own validation must pass, and the artifact, loaded through the
runtime (TensorRT's ONNX through onnxruntime), must match the torch encoders (an MCi tower's
training form; the artifact holds its reparameterized form) within the README's budget. CoreML
is converted and its saved package checked (prediction needs macOS); LiteRT and RKNN skip as
their own tests do when their SDK or environment is missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeclip.bundle import Artifact, Bundle
from edgeclip.errors import EdgeclipError
from edgeclip.export.driver import export_bundle
from edgeclip.model.build import encoder_of
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.runtime.backends import backend_class, target_backend
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeclip.runtime.backends.rknn_toolkit import has_toolkit_env
from edgeclip.runtime.tokenizer import TextTokenizer
from edgeclip.train.config import TrainConfig
from edgeclip.train.loop import train
from tests.conftest import README_PARITY, TINY_CLASSES

INT8_MIN_COSINE = 0.995  # the README's INT8 budget (--min-cosine), written here
PARITY = {**README_PARITY, "int8": INT8_MIN_COSINE}
FAMILIES = {"siglip": dict(model="test-tiny-siglip", loss="siglip"), "mci": dict(model="test-tiny-mci")}
MACOS = sys.platform == "darwin"
litert = pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None,
                            reason="--target litert needs litert-torch (pip install 'edgeclip[litert-export]')")
rknn = pytest.mark.skipif(not has_toolkit_env(), reason="the RKNN toolkit environment is absent: create it with "
                                                         "`python -m edgeclip.runtime.backends.rknn_toolkit`")
CALIB = {"calib": "builtin:shapes", "calib_size": 128}
# (target, precision, options); ONNX fp32 runs by default (tests/export/test_siglip_export.py and
# tests/model/test_reparameterize.py cover more of both families there), the rest with -m slow
CASES = [
    ("onnx", "fp32", {}), pytest.param("openvino", "fp32", {}, marks=pytest.mark.slow),
    pytest.param("onnx", "fp16", {}, marks=pytest.mark.slow),
    pytest.param("onnx", "int8", CALIB, marks=pytest.mark.slow),
    pytest.param("openvino", "int8", CALIB, marks=pytest.mark.slow),
    pytest.param("tensorrt", "int8", CALIB, marks=pytest.mark.slow),
    pytest.param("openvino", "fp16", {}, marks=pytest.mark.slow),
    pytest.param("coreml", "fp16", {}, marks=pytest.mark.slow),
    pytest.param("coreml", "int8w", {}, marks=pytest.mark.slow),
    pytest.param("coreml", "palette6", {}, marks=pytest.mark.slow),
    pytest.param("litert", "fp32", {}, marks=[pytest.mark.slow, litert]),
    pytest.param("litert", "int8", CALIB, marks=[pytest.mark.slow, litert]),
    pytest.param("rknn", "fp16", {"rknn_platform": "rk3588"}, marks=[pytest.mark.slow, rknn]),
]


@pytest.fixture(scope="module", params=list(FAMILIES))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"ckpt-{request.param}") / "ckpt"
    train(TrainConfig(out=str(out), steps=8, batch_size=16, lr=2e-3, warmup_steps=2, eval_size=16,
                      tokenizer_samples=200, progress=False, **FAMILIES[request.param]))  # type: ignore[arg-type]
    return out


def _inputs(ckpt: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, torch reference embeddings) per encoder."""
    model, info = load_checkpoint(ckpt)
    size = model.cfg.vision_cfg.image_size
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))
    ids = TextTokenizer(info.tokenizer_path, info.tokenizer)(["a red star", "a photo of a circle.", "x"])
    with torch.no_grad():
        ref = {"image": encoder_of("image", model)(x).numpy(),
               "text": encoder_of("text", model)(torch.from_numpy(ids)).numpy()}
    return {"image": x.numpy(), "text": ids}, ref


def _run(bundle: Bundle, a: Artifact, x: np.ndarray) -> np.ndarray:
    if a.target == "tensorrt":  # the TensorRT-ready ONNX, in onnxruntime (the engine needs a GPU)
        as_onnx = Artifact(a.encoder, "onnx", a.precision, a.path, {a.main_file: ""}, a.inputs, a.outputs)
        backend: Any = OnnxRuntimeBackend(bundle.artifact_path(a), as_onnx, BackendOptions(threads=1))
    else:
        # OpenVINO's f32 hint: the CPU default may be bf16; RKNN: the PC simulator
        options = {"openvino": BackendOptions(precision_hint="f32"), "rknn": BackendOptions(device="SIM")}.get(
            a.target, BackendOptions())
        backend = backend_class(target_backend(a.target))(bundle.artifact_path(a), a, options)
    return backend.infer({a.inputs[0].name: x})[a.outputs[0].name]


@pytest.mark.parametrize(("target", "precision", "options"), CASES)
def test_family_exports_and_matches_torch(checkpoint: Path, tmp_path: Path, target: str, precision: str,
                                          options: dict[str, str]) -> None:
    out = tmp_path / "b.edgeclip"
    try:
        export_bundle(checkpoint, out, targets=[target], precision=precision,
                      labels={"default": (TINY_CLASSES, None)}, options=options)
    except EdgeclipError as e:
        if target == "rknn" and checkpoint.parent.name.startswith("ckpt-siglip"):
            pytest.xfail(f"known, not fixed: rknn-toolkit2 2.5.0's SDPA fusion fails on SigLIP's graph: {e}")
        raise
    bundle = Bundle.open(out)
    bundle.verify()
    assert {a.key for a in bundle.manifest.artifacts} == {f"{e}/{target}-{precision}" for e in ("image", "text")}
    fastvit = bundle.manifest.model_config["vision_cfg"].get("fastvit")
    assert fastvit is None or fastvit["reparameterized"] is True  # MCi artifacts hold the inference form
    if target == "coreml" and not MACOS:
        for a in bundle.manifest.artifacts:  # converted and saved; prediction needs macOS
            assert a.validation.passed is None
            assert (bundle.root / a.path / "model.mlpackage" / "Manifest.json").is_file()
        pytest.skip("CoreML prediction needs macOS: converted and saved only")
    inputs, ref = _inputs(checkpoint)
    for a in bundle.manifest.artifacts:
        assert a.validation.passed is True, a.key
        got = _run(bundle, a, inputs[a.encoder])
        r = ref[a.encoder]
        cos = (got * r).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(r, axis=1)
        assert cos.min() >= PARITY[precision], (a.key, float(cos.min()))
