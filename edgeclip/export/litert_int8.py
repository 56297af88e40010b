"""LiteRT quantization with `ai-edge-quantizer`, from the float .tflite: fp16 weights, int8 dynamic range,
and full int8 calibrated on the shared calibration set under the accuracy guard.

Full int8 quantizes the matrix products (fully connected, convolutions, batched matmuls) and leaves
the rest (LayerNorm, softmax, GELU, residual adds, the final L2 normalisation) in float: quantizing
every op type costs transformer towers far more accuracy (all ops: cosine 0.89 on the test model;
ONNX Runtime shows the same on ViT-B/32, see ENVIRONMENT notes). The guard's unit is a torch module:
the converter names each op's output after the module path it came from
("…/ResidualBlock_0/…Attention_attn;13"), so "leave this layer in float" is one regex over those names.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip import _deps
from edgeclip.errors import ConfigError
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.int8.common import Int8Options, calibration_record, encoder_data
from edgeclip.export.int8.guard import Run, guarded_quantize
from edgeclip.export.targets import ExportContext, load_file
from edgeclip.records import Calibration

QUANTIZED_OPS = ("FULLY_CONNECTED", "CONV_2D", "BATCH_MATMUL", "DEPTHWISE_CONV_2D")


def _aeq() -> tuple[Any, Any]:
    _deps.require("ai_edge_quantizer", extra="litert-export", purpose="LiteRT quantization")
    from ai_edge_quantizer import quantizer, recipe

    return quantizer, recipe


def quantize_recipe(source: Path, precision: str, out: Path) -> None:
    """fp16 (weights cast to half) or int8-dynamic (int8 weights, activations quantized at run time)."""
    quantizer, recipe = _aeq()
    qt = quantizer.Quantizer(str(source))
    if precision == "fp16":
        qt.add_weight_only_config(regex=".*", operation_name="*", num_bits=16,
                                  algorithm_key=recipe.AlgorithmName.FLOAT_CASTING)
    else:
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    _write(_quiet_quantize(qt), out)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ai-edge-quantizer draws progress bars that ignore enable_progress_bar, and warns that calibration
    keeps every intermediate tensor (which calibration needs)."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _quiet_quantize(qt: Any, ranges: Any = None) -> Any:
    with _quiet():
        return qt.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)


def _write(result: Any, out: Path) -> None:
    out.unlink(missing_ok=True)
    result.export_model(str(out), overwrite=True)


def module_of(tensor_name: str) -> str:
    """"a/b/LayerNorm_ln_1;3" -> "a/b/LayerNorm_ln_1"; fused names ("x;;y;1") keep their first part."""
    return tensor_name.split(";", 1)[0]


def quantizable_units(source: Path) -> list[str]:
    """The modules that hold quantized ops, in graph order, from the float .tflite."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(source))
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    ops = [(op["op_name"], module_of(names.get(op["outputs"][0], ""))) for op in it._get_ops_details()]
    return list(dict.fromkeys(m for kind, m in ops if kind in QUANTIZED_OPS and m))


def _static(source: Path, excluded: list[str]) -> Any:
    quantizer, recipe = _aeq()
    qt = quantizer.Quantizer(str(source))
    for op in QUANTIZED_OPS:
        qt.add_static_config(regex=".*", operation_name=op, activation_num_bits=8, weight_num_bits=8)
    for unit in excluded:  # later entries win: these override the entries above
        qt.update_quantization_recipe(regex=f"^{re.escape(unit)};", operation_name="*",
                                      algorithm_key=recipe.AlgorithmName.NO_QUANTIZE)
    return qt


def _samples(source: Path, batches: list[np.ndarray]) -> dict[str, list[dict[str, np.ndarray]]]:
    """The calibration set as the quantizer takes it: {signature: [{input name: one row}, ...]}."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(source))
    (key, sig), = it.get_signature_list().items()
    detail = it.get_input_details()[0]
    rows: Iterator[np.ndarray] = (b[i : i + 1] for b in batches for i in range(len(b)))
    return {key: [{sig["inputs"][0]: r.astype(detail["dtype"])} for r in rows]}


def quantize_int8(ctx: ExportContext, spec: EncoderSpec, source: Path, out: Path) -> Calibration:
    """Write the guarded int8 .tflite to `out`; returns the manifest's calibration record."""
    opts = Int8Options.from_options(ctx.options)
    if opts.method != "minmax":
        raise ConfigError(f"--calib-method {opts.method} is not available for litert: ai-edge-quantizer's static "
                          "recipe calibrates min/max ranges", fix="use --calib-method minmax for --target litert")
    data = encoder_data(ctx, spec)
    candidates = quantizable_units(source)
    # ranges are measured once on the float graph; each guard attempt only re-quantizes
    with _quiet():
        ranges = _static(source, []).calibrate(_samples(source, data.calibration), num_threads=os.cpu_count() or 1)

    def quantize(excluded: list[str]) -> Run:
        _write(_quiet_quantize(_static(source, excluded), ranges), out)
        return load_file(out, spec, "litert", "int8")

    result = guarded_quantize(quantize, candidates, [], data.heldout, opts.budget,
                              what=f"{spec.name}/litert-int8")
    quantize(result.excluded)  # the file on disk is the chosen one, whatever the guard tried last
    return calibration_record(
        "minmax", data, result, opts.budget, [], quantizer=f"ai-edge-quantizer {version('ai-edge-quantizer')}",
        scheme=f"int8 weights (per channel) and activations (per tensor, min/max) on {', '.join(QUANTIZED_OPS)}; "
               "other ops float",
        measured_with="LiteRT Interpreter (XNNPACK, CPU)",
    )
