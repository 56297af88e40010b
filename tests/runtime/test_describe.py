"""Backend.describe() says what ran an artifact (issue 18 item 6), read back from the real SDKs.

Expected values come from the SDKs' own documented behaviour: OpenVINO's CPU plugin runs float layers
in the precision its INFERENCE_PRECISION_HINT names; onnxruntime's quantize_dynamic turns MatMul into
integer kernels (MatMulInteger / DynamicQuantizeMatMul) and leaves a float graph's MatMul float.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeclip.bench.machine import machine_info
from edgeclip.bundle import Artifact, Bundle
from edgeclip.runtime.backends.base import BackendOptions, fell_back_to_cpu
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend


def _artifact(bundle: Path, key: str) -> tuple[Path, Artifact]:
    b = Bundle.open(bundle)
    a = next(a for a in b.manifest.artifacts if a.key == key)
    return b.artifact_path(a), a


@pytest.fixture(scope="module")
def ov_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino")
    from edgeclip.export.driver import export_bundle

    out = tmp_path_factory.mktemp("ov-describe") / "ov.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["openvino"], precision="fp32", encoders=["image"])
    return out


def test_openvino_reports_the_precision_each_layer_ran_in(ov_bundle: Path) -> None:
    from edgeclip.runtime.backends.openvino import OpenVinoBackend

    path, art = _artifact(ov_bundle, "image/openvino-fp32")
    f32 = OpenVinoBackend(path, art, BackendOptions(threads=1, precision_hint="f32")).describe()
    assert f32["device"] == "CPU" and f32["requested"] == "CPU" and f32["precision_hint"] == "f32"
    assert f32["compute_layers"] and set(f32["compute_layers"]) == {"f32"}
    assert "bf16" not in f32["runtime_precisions"]
    if not {"avx512_bf16", "amx_bf16"} & set(machine_info(None)["cpu_flags"]):
        pytest.skip("this CPU has no bf16 arithmetic: OpenVINO runs f32 whatever the hint")
    bf16 = OpenVinoBackend(path, art, BackendOptions(threads=1, precision_hint="bf16")).describe()
    assert bf16["precision_hint"] == "bf16"
    assert bf16["compute_layers"].get("bf16", 0) > 0 and "f32" not in bf16["compute_layers"]
    assert bf16["runtime_precisions"].get("bf16", 0) > 0
    assert not fell_back_to_cpu(f32) and not fell_back_to_cpu(bf16)


def test_onnxruntime_counts_integer_and_float_kernels_that_ran(tiny_bundle: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, art = _artifact(tiny_bundle, "image/onnx-fp32")
    fp32 = OnnxRuntimeBackend(path, art, BackendOptions(threads=1)).describe()
    assert fp32["providers"] == ["CPUExecutionProvider"] and fp32["device"] == "CPU"
    assert fp32["compute_layers"].get("float", 0) > 0 and "int8" not in fp32["compute_layers"]
    int8_path = tmp_path / "int8.onnx"
    quantize_dynamic(str(path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    int8 = OnnxRuntimeBackend(int8_path, art, BackendOptions(threads=1)).describe()
    assert int8["compute_layers"].get("int8", 0) > 0
    assert int8["compute_layers"].get("float", 0) < fp32["compute_layers"]["float"]
    assert any(k.startswith(("MatMulInteger", "DynamicQuantizeMatMul")) for k in int8["kernels"])


def test_asking_onnxruntime_for_cuda_without_it_is_a_cpu_fallback(tiny_bundle: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here: nothing falls back")
    path, art = _artifact(tiny_bundle, "image/onnx-fp32")
    info = OnnxRuntimeBackend(path, art, BackendOptions(threads=1, device="CUDA")).describe()
    assert info["requested"] == "CUDA" and info["device"] == "CPU" and fell_back_to_cpu(info)
    cpu = OnnxRuntimeBackend(path, art, BackendOptions(threads=1)).describe()
    assert not fell_back_to_cpu(cpu)
