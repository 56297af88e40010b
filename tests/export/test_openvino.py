from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeclip.bundle import Bundle
from edgeclip.data.shapes import ShapesDataset
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.openvino import OpenVinoBackend
from tests.export.target_template import TargetTemplate


class TestOpenVino(TargetTemplate):
    target = "openvino"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    backend = "openvino"
    backend_options = BackendOptions(precision_hint="f32")

    def check_target_specific(self, bundle: Bundle, artifact) -> None:  # type: ignore[no-untyped-def]
        assert sorted(Path(f).suffix for f in artifact.files) == [".bin", ".xml"]
        assert_converted_from_torch(bundle.root / artifact.main_file, layers=2)  # test-tiny: 2 blocks per tower
        assert "INFERENCE_PRECISION_HINT=f32" in artifact.validation.checked_with
        xml = (bundle.root / artifact.main_file).read_text()
        assert ('element_type="f16"' in xml) == (artifact.precision == "fp16")

    def test_precision_hint_is_exposed(self, bundle: Bundle) -> None:
        a = bundle.manifest.find("image", "openvino", "fp32")[0]
        f32 = OpenVinoBackend(bundle.artifact_path(a), a, BackendOptions(precision_hint="f32"))
        assert f32.precision_hint == "f32"
        default = OpenVinoBackend(bundle.artifact_path(a), a, BackendOptions())
        assert default.precision_hint in ("f32", "bf16", "f16")  # the device's own default

    def test_same_top1_as_onnx_on_held_out_images(self, bundle: Bundle, tiny_checkpoint: Path) -> None:
        from edgeclip.export.driver import export_bundle
        from tests.conftest import TINY_CLASSES

        export_bundle(tiny_checkpoint, bundle.root, targets=["onnx"], labels={"default": (TINY_CLASSES, None)})
        images = [ShapesDataset("heldout", 24, 32)[i].image for i in range(24)]
        ov = ZeroShotClassifier.load(bundle.root, backend="openvino", precision="fp32")
        ort = ZeroShotClassifier.load(bundle.root, backend="onnxruntime", precision="fp32")
        assert [r.label for r in ov.classify(images)] == [r.label for r in ort.classify(images)]
        a, b = ov.embed_images(images)[0], ort.embed_images(images)[0]
        assert float(np.min((a * b).sum(1))) >= 0.999


def test_openvino_backend_is_thread_safe(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from edgeclip.export.driver import export_bundle
    from tests.conftest import TINY_CLASSES

    out = tmp_path / "b"
    export_bundle(tiny_checkpoint, out, targets=["openvino"], encoders=["image"],
                  labels={"default": (TINY_CLASSES, None)})
    clf = ZeroShotClassifier.load(out, backend="openvino")
    images = [ShapesDataset("heldout", 8, 32)[i].image for i in range(8)]
    expected = [r.predictions for r in clf.classify(images)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: clf.classify([images[i % 8]])[0].predictions, range(32)))
    assert got == [expected[i % 8] for i in range(32)]


def assert_converted_from_torch(xml: Path, layers: int) -> None:
    """The saved IR came from OpenVINO's PyTorch frontend: it names every MatMul, Convolution and
    attention op after the torch module and aten op it traced ("__module.visual.conv1/aten::
    _convolution/Convolution"), where the ONNX frontend names them after ONNX nodes ("node_MatMul_18").
    Torch's SDPA stays one ScaledDotProductAttention op per block."""
    import openvino as ov

    ops = [op for op in ov.Core().read_model(str(xml)).get_ordered_ops()
           if op.get_type_name() in ("MatMul", "Convolution", "ScaledDotProductAttention")]
    assert ops and all("aten::" in op.get_friendly_name() for op in ops), [op.get_friendly_name() for op in ops][:4]
    assert sum(op.get_type_name() == "ScaledDotProductAttention" for op in ops) == layers, xml


def runtime_fake_quantize(xml: Path) -> int:
    """FakeQuantize layers the CPU plugin runs on their own (not fused into an int8 layer)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return sum(op.get_rt_info()["layerType"].astype(str) == "FakeQuantize"
               for op in compiled.get_runtime_model().get_ordered_ops())


def test_clip_float_defaults_are_found_in_the_converted_model() -> None:
    """The stem conv and the final projection are the layers CLIP keeps in float unless measured
    safe; in the IR from torch the projection's weight has lost its name (a folded transpose)."""
    import openvino as ov
    import torch

    from edgeclip.export.encoders import export_module
    from edgeclip.export.int8.openvino import float_defaults
    from edgeclip.export.openvino import openvino_module
    from edgeclip.model.build import build_model

    torch.manual_seed(0)
    model = build_model("test-tiny").eval()
    # the patch stem is a MatMul in the IR (PatchEmbedding), found by conv1's weight all the same
    for encoder, expected in (("image", ["MatMul", "MatMul"]), ("text", ["MatMul"])):
        # as quantize_openvino does: the IR of openvino_module, the parameters of export_module
        ir = ov.convert_model(openvino_module(encoder, model), example_input=_example(encoder))
        names = float_defaults(ir, export_module(encoder, model))
        ops = {op.get_friendly_name(): op for op in ir.get_ordered_ops()}
        assert [ops[n].get_type_name() for n in names] == expected, (encoder, names)
        projection = ops[names[-1]]  # the last MatMul before the L2 normalisation
        last = [op for op in ir.get_ordered_ops() if op.get_type_name() == "MatMul"][-1]
        assert projection.get_friendly_name() == last.get_friendly_name()


def _example(encoder: str) -> Any:
    import torch

    return torch.randn(2, 3, 32, 32) if encoder == "image" else torch.randint(1, 100, (2, 16))


def test_patch_stem_is_one_matmul_with_the_convolutions_arithmetic() -> None:
    """OpenVINO's export form of a ViT's patch stem (PatchEmbedding): no Convolution in the IR, and
    the same embeddings as the convolution (a conv-stem ViT keeps its convolutions)."""
    import openvino as ov
    import torch

    from edgeclip.export.encoders import export_module
    from edgeclip.export.openvino import openvino_module
    from edgeclip.model.build import build_model

    for name, convs in (("test-tiny", 0), ("edge-tiny", 4)):
        torch.manual_seed(0)
        model = build_model(name).eval()
        s = model.cfg.vision_cfg.image_size
        x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1))
        module = openvino_module("image", model)
        with torch.no_grad():
            assert (module(x) - export_module("image", model)(x)).abs().max().item() < 1e-5
        ir = ov.convert_model(module, example_input=x)
        assert sum(op.get_type_name() == "Convolution" for op in ir.get_ordered_ops()) == convs, name
