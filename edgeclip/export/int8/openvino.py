"""OpenVINO INT8 through NNCF post-training quantization (ModelType.TRANSFORMER), guarded.

NNCF's transformer preset applies SmoothQuant and fast bias correction and handles the causal
mask. Layers left in float go to `nncf.IgnoredScope(names=...)` by the OpenVINO op names of the
model converted from torch ("__module.visual.conv1/aten::_convolution/Convolution"); the CLIP
float defaults are found by the torch parameter each op multiplies by, so they do not depend on
how the frontend names ops.
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
import torch

from edgeclip import _deps
from edgeclip.bundle import Calibration
from edgeclip.export.encoders import EncoderSpec, export_module
from edgeclip.export.int8.common import Int8Options, calibration_record, encoder_data
from edgeclip.export.int8.guard import Run
from edgeclip.export.int8.onnxruntime import FLOAT_PROJECTIONS, FLOAT_WEIGHT_PREFIXES
from edgeclip.export.int8.speed import guarded_fast_quantize
from edgeclip.export.targets import ExportContext, load_file
from edgeclip.runtime.backends.base import BackendOptions

# the ops the guard may leave in float (NNCF quantizes SDPA inputs itself, as its transformer preset says).
# OpenVINO converts a depthwise / grouped conv to GroupConvolution, which NNCF quantizes too: without it
# here the guard could neither keep an MCi tower's depthwise convs in float nor honour float defaults on them
QUANTIZABLE = ("MatMul", "Convolution", "GroupConvolution")
# ops between a weight constant and the op using it (the frontend folds transposes, fp16 decompresses)
_WEIGHT_PATH = ("Convert", "Transpose", "Reshape")
# NNCF's range estimators for our method names; it has no KL-entropy estimator: its histogram
# search (minimising quantization error, as torch's HistogramObserver) stands in for it
RANGE_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


def quantizable_ops(model: Any) -> list[str]:
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZABLE]


def op_kinds(model: Any) -> dict[str, list[str]]:
    """The quantizable ops by type, grouped convolutions first (the kind the speed pass found slow)."""
    kinds: dict[str, list[str]] = {t: [] for t in reversed(QUANTIZABLE)}
    for op in model.get_ordered_ops():
        if op.get_type_name() in kinds:
            kinds[op.get_type_name()].append(op.get_friendly_name())
    return {t: names for t, names in kinds.items() if names}


def _weight(op: Any) -> Any | None:
    """The Constant a MatMul/Convolution multiplies by, or None (activation x activation)."""
    for i in range(op.get_input_size()):
        node = op.input_value(i).get_node()
        while node.get_type_name() in _WEIGHT_PATH:
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            return node
    return None


def float_defaults(model: Any, module: torch.nn.Module) -> list[str]:
    """OpenVINO names of the ops CLIP keeps in float unless measured safe (the same rule as the
    onnxruntime quantizer's): those multiplying by the stem's or the final projection's weights,
    matched by tensor name where the frontend kept it, else by value (folded transposes lose it)."""
    keep = {n: p.detach().numpy() for n, p in module.named_parameters()
            if n.startswith(FLOAT_WEIGHT_PREFIXES) or n in FLOAT_PROJECTIONS}
    names = []
    for op in model.get_ordered_ops():
        const = _weight(op) if op.get_type_name() in ("MatMul", "Convolution") else None
        if const is None:
            continue
        tensor_names = {n.removeprefix("self.") for n in const.output(0).get_names()}
        if tensor_names & keep.keys() or any(_same(const.get_data(), p) for p in keep.values()):
            names.append(op.get_friendly_name())
    return names


def _same(data: np.ndarray, param: np.ndarray) -> bool:
    if data.size != param.size:
        return False
    return any(data.shape == p.shape and np.array_equal(data, p) for p in (param, param.T))


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
    ctx: ExportContext, spec: EncoderSpec, fp32: Any, folder: Path, hint: str
) -> tuple[Calibration, Any]:
    """Guarded NNCF INT8 of the fp32 ov.Model `fp32` (float input); returns the manifest's
    calibration record and the quantized model the guard accepted (the caller saves it)."""
    ov: Any = _deps.require("openvino", extra="openvino", purpose="the openvino export target")
    opts = Int8Options.from_options(ctx.options)
    data = encoder_data(ctx, spec)
    defaults = float_defaults(fp32, export_module(spec.name, ctx.model))
    samples = [b[i : i + 1] for b in data.calibration for i in range(len(b))]  # NNCF collects per sample
    accepted: list[Any] = []

    def quantize(excluded: list[str]) -> Run:
        model = _nncf_quantize(fp32, samples, opts.method, excluded)
        accepted[:] = [model]  # the guard returns with the last model it tried
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
        return load_file(folder / "model.xml", spec, "openvino", "int8", BackendOptions(precision_hint=hint))

    # accuracy is measured at the f32 hint; speed as the runtime runs the artifact (its default hint)
    result = guarded_fast_quantize(
        quantize, quantizable_ops(fp32), defaults, data.heldout, opts.budget, what=f"{spec.name}/openvino-int8",
        kinds=op_kinds(fp32) if opts.speed_pass else {},
        timing=lambda: load_file(folder / "model.xml", spec, "openvino", "int8", BackendOptions()),
    )
    record = calibration_record(
        opts.method, data, result, opts.budget, defaults, quantizer=f"nncf {version('nncf')}",
        scheme="NNCF ModelType.TRANSFORMER (SmoothQuant + fast bias correction), int8 weights and activations",
        range_estimator=RANGE_ESTIMATORS[opts.method], measured_with=f"OpenVINO CPU (INFERENCE_PRECISION_HINT={hint})",
        speed_timed_with="OpenVINO CPU, default precision hint, batch 1" if opts.speed_pass else None,
    )
    return record, accepted[0]
