"""OpenVINO target: IR (.xml + .bin) converted from the encoder's ONNX graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeclip import _deps
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.int8.openvino import quantize_openvino
from edgeclip.export.reference import reference_onnx
from edgeclip.export.targets import Built, ExportContext
from edgeclip.runtime.backends.base import BackendOptions

# parity is checked at fp32 inference precision: the CPU default may be bf16 (see BackendOptions)
VALIDATION_HINT = "f32"


class OpenVinoTarget:
    name = "openvino"

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        ov: Any = _deps.require("openvino", extra="openvino", purpose="the openvino export target")
        calibration = None
        if precision == "int8":
            calibration = quantize_openvino(ctx, spec, reference_onnx(ctx, spec), folder, VALIDATION_HINT)
        else:
            model = ov.convert_model(str(reference_onnx(ctx, spec)))
            # fp16 stores weights in half precision; compute precision is the device's choice
            ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=precision == "fp16")
        return Built(
            ["model.xml", "model.bin"], {"openvino": ov.__version__, "source": "onnx", "weights": precision},
            calibration, checked_with=f"OpenVINO CPU (INFERENCE_PRECISION_HINT={VALIDATION_HINT})",
            options=BackendOptions(precision_hint=VALIDATION_HINT),
        )
