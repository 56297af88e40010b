"""OpenVINO target: IR (.xml + .bin) converted from the encoder's ONNX graph."""

from __future__ import annotations

from typing import Any

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.int8.openvino import quantize_openvino
from edgeclip.export.reference import reference_onnx
from edgeclip.export.targets import ExportContext
from edgeclip.export.validate import validated_artifact
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.openvino import OpenVinoBackend

# parity is checked at fp32 inference precision: the CPU default may be bf16 (see BackendOptions)
VALIDATION_HINT = "f32"


class OpenVinoTarget:
    name = "openvino"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")

    def export(self, ctx: ExportContext, spec: EncoderSpec, precision: str) -> Artifact:
        ov: Any = _deps.require("openvino", extra="openvino", purpose="the openvino export target")
        rel_dir, folder = ctx.artifact_dir(spec.name, self.name, precision)
        calibration = None
        if precision == "int8":
            calibration = quantize_openvino(ctx, spec, reference_onnx(ctx, spec), folder, VALIDATION_HINT)
        else:
            model = ov.convert_model(str(reference_onnx(ctx, spec)))
            # fp16 stores weights in half precision; compute precision is the device's choice
            ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=precision == "fp16")
        files = [f"{rel_dir}/model.xml", f"{rel_dir}/model.bin"]
        probe = Artifact.probe(spec.name, self.name, precision, list(spec.inputs), list(spec.outputs))
        backend = OpenVinoBackend(folder / "model.xml", probe, BackendOptions(precision_hint=VALIDATION_HINT))
        artifact = validated_artifact(
            ctx, spec, self.name, precision, rel_dir, files,
            run=lambda x: backend.infer({spec.input_name: x})[spec.output_name],
            checked_with=f"OpenVINO CPU (INFERENCE_PRECISION_HINT={VALIDATION_HINT})",
            environment={"openvino": ov.__version__, "source": "onnx", "weights": precision},
            calibration=calibration,
        )
        return artifact
