"""Adding a target is one builder, one backend and one capability row (docs/adding-a-target.md).

The toy target below saves the encoder's fp32 ONNX graph as `encoder.toy`; the toy backend runs that
file with onnxruntime. Both are registered through the public registration functions, and the
export driver and `ZeroShotClassifier` do the rest: hashing, loading through the runtime,
validation against torch, the manifest, and classification.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeclip.bundle import Artifact, Bundle
from edgeclip.errors import ConfigError, ValidationError
from edgeclip.export.capabilities import CAPABILITIES, Capability, plan_exports, register_capability
from edgeclip.export.driver import export_bundle
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.reference import reference_onnx
from edgeclip.export.targets import TARGETS, Built, ExportContext, get_target, register_target
from edgeclip.model.checkpoint import load_checkpoint
from edgeclip.model.clip import ImageEncoder
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends import BACKENDS, register_backend
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.preprocess import preprocess
from edgeclip.runtime.similarity import cosine_rows
from tests.conftest import README_PARITY, TINY_CLASSES
from tests.export.onnx_file_backend import OnnxFileBackend

TOY = "toy"
HERE = "tests.export.test_adding_a_target"
TARGET_BUILT_IN = ("onnx", "openvino", "tensorrt", "coreml")


class ToyTarget:
    """The builder: write files, say how to check them. No hashing, loading or validation."""

    name = TOY
    corrupt = False  # the break check: a builder that saves wrong weights

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        model = onnx.load(str(reference_onnx(ctx, spec)))
        if self.corrupt:
            _perturb_largest_weight(model)
        onnx.save(model, str(folder / "encoder.toy"))
        return Built(["encoder.toy"], {"onnx": onnx.__version__}, checked_with="toy backend")


def _perturb_largest_weight(model: onnx.ModelProto) -> None:
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init)
    w = w + np.random.default_rng(0).normal(0, float(np.abs(w).mean()), w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(w, init.name))


class ToyBackend(OnnxFileBackend):
    """The backend: the one small runtime interface (available / unavailable / infer)."""

    name: ClassVar[str] = TOY
    opened: ClassVar[list[Path]] = []  # every file it loaded, so a test can see who loads what

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        ToyBackend.opened.append(Path(path))
        super().__init__(path, artifact, options)


@pytest.fixture(scope="module", autouse=True)
def toy_registered() -> Iterator[None]:
    register_target(TOY, f"{HERE}:ToyTarget")
    register_backend(TOY, TOY, f"{HERE}:ToyBackend")
    register_capability(Capability(TOY, ("fp32",), (), builds_on="anywhere (onnx)", runs_on="the toy backend",
                                   numerics_here="yes: the toy backend vs torch"))
    yield
    for registry in (TARGETS, BACKENDS, CAPABILITIES):
        registry.pop(TOY)


@pytest.fixture(scope="module")
def toy_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "b.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=[TOY], labels={"default": (TINY_CLASSES, None)})
    return out


def test_the_driver_hashes_loads_validates_and_registers_a_toy_artifact(toy_bundle: Path) -> None:
    bundle = Bundle.open(toy_bundle)
    bundle.verify()
    by_key = {a.key: a for a in bundle.manifest.artifacts}
    assert set(by_key) == {"image/toy-fp32", "text/toy-fp32"}
    for a in by_key.values():
        assert list(a.files) == [f"{a.encoder}/toy-fp32/encoder.toy"]
        assert a.validation.passed is True and a.validation.checked_with == "toy backend"
        assert a.validation.cosine_min is not None and a.validation.cosine_min >= README_PARITY["fp32"]
        assert a.environment.to_dict() == {"onnx": onnx.__version__}
    # the driver checked the staged files through the registered backend (the code a device runs)
    staged = {p.relative_to(p.parents[2]).as_posix() for p in ToyBackend.opened
              if p.parents[2].name.endswith(".partial")}
    assert staged == {"image/toy-fp32/encoder.toy", "text/toy-fp32/encoder.toy"}


def test_the_runtime_classifies_through_the_toy_backend(toy_bundle: Path, tiny_checkpoint: Path) -> None:
    clf = ZeroShotClassifier.load(toy_bundle, backend=TOY)
    assert clf.backend_name == TOY and clf.image.artifact.key == "image/toy-fp32"
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    got, errors = clf.embed_images(images)
    assert errors == [None, None, None]
    model, info = load_checkpoint(tiny_checkpoint)
    pixels = torch.from_numpy(np.stack([preprocess(i, info.preprocess) for i in images]))
    with torch.no_grad():
        want = ImageEncoder(model).eval()(pixels).numpy()
    assert cosine_rows(want, got).min() >= README_PARITY["fp32"]
    results = clf.classify(images, top_k=2)
    assert all(r.ok and r.label in TINY_CLASSES for r in results)
    assert clf.embed_texts(["a red circle"]).shape == (1, got.shape[1])  # the text tower runs on it too


def test_a_builder_that_writes_a_wrong_file_is_refused_by_the_driver(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ToyTarget, "corrupt", True)
    out = tmp_path / "b.edgeclip"
    with pytest.raises(ValidationError, match="toy-fp32.*disagrees with the torch reference"):
        export_bundle(tiny_checkpoint, out, targets=[TOY], encoders=["image"])
    assert not out.exists()
    assert not list(tmp_path.iterdir()), "nothing staged is left behind"


def test_precisions_and_backend_come_from_the_capability_row() -> None:
    assert CAPABILITIES[TOY].backend == TOY
    assert plan_exports([TOY], None) == [(TOY, "fp32")]
    with pytest.raises(ConfigError, match="does not support precision 'fp16'"):
        plan_exports([TOY], ["fp16"])
    for name in (*TARGET_BUILT_IN, TOY):
        target: Any = get_target(name)
        assert not hasattr(target, "precisions"), f"{name} repeats the capability table's precisions"


def test_registering_a_taken_name_is_refused() -> None:
    with pytest.raises(ConfigError):
        register_target("onnx", f"{HERE}:ToyTarget")
    with pytest.raises(ConfigError):
        register_backend("onnxruntime", TOY, f"{HERE}:ToyBackend")
    with pytest.raises(ConfigError):
        register_capability(CAPABILITIES["onnx"])
