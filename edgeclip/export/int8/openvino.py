"""OpenVINO INT8 through NNCF post-training quantization (ModelType.TRANSFORMER), guarded.

NNCF's transformer preset applies SmoothQuant and fast bias correction and handles the causal
mask. Layers left in float go to `nncf.IgnoredScope(names=...)` by their OpenVINO op names, which
the ONNX frontend derives from the ONNX node names (a Conv with bias becomes "<name>/WithoutBiases").
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip import _deps
from edgeclip.bundle import Calibration
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.int8.common import Int8Options, calibration_record, encoder_data
from edgeclip.export.int8.guard import Run, guarded_quantize
from edgeclip.export.int8.onnxruntime import clip_float_defaults
from edgeclip.export.targets import ExportContext, load_file
from edgeclip.runtime.backends.base import BackendOptions

# OpenVINO converts a depthwise / grouped conv to GroupConvolution, which NNCF quantizes too: without it
# here the guard could neither keep an MCi tower's depthwise convs in float nor honour float defaults on them
QUANTIZABLE = ("MatMul", "Convolution", "GroupConvolution")
# NNCF's range estimators for our method names; it has no KL-entropy estimator: its histogram
# search (minimising quantization error, as torch's HistogramObserver) stands in for it
RANGE_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


def ov_layer_names(model: Any, onnx_names: list[str]) -> list[str]:
    """OpenVINO op names of the MatMul/Convolution ops converted from the given ONNX nodes."""
    ops = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZABLE]
    return [n for n in ops if any(n == o or n.startswith(o + "/") for o in onnx_names)]


def _nncf_quantize(fp32: Any, samples: list[np.ndarray], method: str, excluded: list[str]) -> Any:
    """NNCF PTQ of a copy of the converted fp32 model (the guard quantizes it several times)."""
    nncf: Any = _deps.require("nncf", extra="export", purpose="OpenVINO INT8 (NNCF)")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf.set_log_level(logging.ERROR)
    estimator = getattr(RangeEstimatorParametersSet, RANGE_ESTIMATORS[method])
    # NNCF draws rich progress bars on stdout with no switch to turn them off
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return nncf.quantize(
            fp32.clone(), nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(samples), ignored_scope=nncf.IgnoredScope(names=excluded, validate=False),
            advanced_parameters=AdvancedQuantizationParameters(activations_range_estimator_params=estimator),
        )


def quantize_openvino(
    ctx: ExportContext, spec: EncoderSpec, onnx_path: Path, folder: Path, hint: str
) -> Calibration:
    """Write the guarded INT8 IR to folder/model.xml; returns the manifest's calibration record."""
    ov: Any = _deps.require("openvino", extra="openvino", purpose="the openvino export target")
    opts = Int8Options.from_options(ctx.options)
    data = encoder_data(ctx, spec)
    fp32 = ov.convert_model(str(onnx_path))
    candidates = ov_layer_names(fp32, [op.get_friendly_name() for op in fp32.get_ordered_ops()])
    defaults = ov_layer_names(fp32, clip_float_defaults(onnx_path))

    samples = [b[i : i + 1] for b in data.calibration for i in range(len(b))]  # NNCF collects per sample

    def quantize(excluded: list[str]) -> Run:
        model = _nncf_quantize(fp32, samples, opts.method, excluded)
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
        return load_file(folder / "model.xml", spec, "openvino", "int8", BackendOptions(precision_hint=hint))

    result = guarded_quantize(quantize, candidates, defaults, data.heldout, opts.budget,
                              what=f"{spec.name}/openvino-int8")
    return calibration_record(
        opts.method, data, result, opts.budget, defaults, quantizer=f"nncf {version('nncf')}",
        scheme="NNCF ModelType.TRANSFORMER (SmoothQuant + fast bias correction), int8 weights and activations",
        range_estimator=RANGE_ESTIMATORS[opts.method], measured_with=f"OpenVINO CPU (INFERENCE_PRECISION_HINT={hint})",
    )
