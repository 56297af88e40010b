"""ONNX Runtime INT8, guarded: calibration ranges, static QDQ (onnx and TensorRT flavours) and dynamic.

The TensorRT flavour is this quantizer with symmetric int8 activations (zero point 0) and float
biases (`quantize_onnx(..., flavour="tensorrt")`); it has no logic of its own.

Ranges are computed once per encoder with onnxruntime's calibrators (so entropy gets real bin
counts: `quantize_static`'s own Entropy path silently equals MinMax) and saved as a calibration
cache; every quantization after that (the guard re-quantizes with other layers in float) reads
the cache through `quantize_static(calibration_cache_path=...)` and runs no calibration.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bundle import Calibration
from edgeclip.errors import ExportError
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.int8.common import Int8Options, calibration_record, encoder_data
from edgeclip.export.int8.guard import Run
from edgeclip.export.int8.speed import guarded_fast_quantize
from edgeclip.export.reference import run_in_onnxruntime
from edgeclip.export.targets import ExportContext

OP_TYPES = ("MatMul", "Gemm", "Conv")  # all op types cost accuracy and break on -inf masks
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")  # ConvInteger has no int8-weight CPU kernel
# CLIP-aware defaults: the patch embedding / conv stem and the final projections stay float
FLOAT_WEIGHT_PREFIXES = ("visual.conv1", "visual.stem")
FLOAT_PROJECTIONS = ("visual.proj", "text_projection")
CALIB_OPTIONS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": True},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 255},
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer logs advice on the root logger and warns about its internals."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[method]


def quantizable_nodes(path: Path, op_types: Sequence[str] | None = OP_TYPES) -> list[str]:
    """Names of the nodes quantize_static would quantize (op_types None: every QDQ-capable op)."""
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    types = set(op_types) if op_types is not None else set(QDQRegistry) | set(QLinearOpsRegistry)
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in types]


def weight_nodes(path: Path, op_types: Sequence[str]) -> list[str]:
    """Nodes of `op_types` whose weight (second input) is an initializer. quantize_dynamic
    quantizes only these (activation x activation MatMuls, as in attention, stay float), so they
    are the only layers the guard can keep in float for int8-dynamic: ranking the others would
    cost a quantization each and could record as "kept in float" a layer that never was quantized."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in op_types and n.input[1:2] and n.input[1] in weights]


def node_kinds(path: Path, nodes: Sequence[str]) -> dict[str, list[str]]:
    """`nodes` by op type, grouped / depthwise Convs (attribute group > 1) a kind of their own and first."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    wanted = set(nodes)
    kinds: dict[str, list[str]] = {"Conv (grouped)": []}
    for n in graph.node:
        if n.name in wanted:
            grouped = n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
            kinds.setdefault("Conv (grouped)" if grouped else n.op_type, []).append(n.name)
    return {k: names for k, names in kinds.items() if names}


def clip_float_defaults(path: Path) -> list[str]:
    """Nodes kept in float unless measured safe: the patch embedding / conv stem (Conv on
    visual.conv1 / visual.stem weights) and the final projection MatMul (visual.proj /
    text_projection). The token embedding is a Gather, which is never quantized here."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    keep = []
    for n in graph.node:
        weights = n.input[1:2]
        stem = n.op_type == "Conv" and any(w.startswith(FLOAT_WEIGHT_PREFIXES) for w in weights)
        projection = n.op_type in ("MatMul", "Gemm") and any(w in FLOAT_PROJECTIONS for w in weights)
        if stem or projection:
            keep.append(n.name)
    return keep


class _Reader:
    """onnxruntime CalibrationDataReader over fixed batches."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self._feeds = [{input_name: b} for b in batches]
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def compute_ranges(
    model: Path, input_name: str, batches: Sequence[np.ndarray], method: str, op_types: Sequence[str] | None,
    cache_file: Path,
) -> Path:
    """Calibrate `model` on `batches` with onnxruntime's calibrator for `method`; save the tensor
    ranges as a calibration cache (JSON) that quantize_static reads back."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if not batches:
        raise ExportError("no calibration batches", fix="pass --calib with images")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        calibrator = create_calibrator(
            model, list(op_types) if op_types else None,
            augmented_model_path=str(cache_file.with_suffix(".augmented.onnx")),
            calibrate_method=_ort_method(method), extra_options=CALIB_OPTIONS[method],
        )
        calibrator.collect_data(_Reader(input_name, batches))
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, cache_file)
    return cache_file


def quantize_static_qdq(
    src: Path, dst: Path, ranges: Path, method: str, excluded: Sequence[str], *,
    op_types: Sequence[str] | None = OP_TYPES, symmetric_activations: bool = False,
) -> None:
    """QDQ int8: per-channel symmetric int8 weights, per-tensor activations (asymmetric for
    onnxruntime CPU; symmetric, zero point 0, for TensorRT) on the inputs of the quantized ops,
    their outputs float; biases left in float for TensorRT."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    extra: dict[str, Any] = {
        "WeightSymmetric": True,
        "ActivationSymmetric": symmetric_activations,
        # MatMul Q/DQ on the inputs only: a float output lets onnxruntime fuse DQ -> MatMul into
        # MatMulIntegerToFloat (no requantize + dequantize before the bias Add; ViT-B/32 int8 ran
        # 2.23x -> 2.44x fp32 here) and is the placement TensorRT's explicit quantization expects.
        # Conv keeps its output Q/DQ: without it onnxruntime has no QLinearConv and dequantizes the
        # weight on every run (1.4 ms of ViT-B/32's 15)
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
    }
    if symmetric_activations:
        extra["QuantizeBias"] = False  # TensorRT has no int32 DequantizeLinear for biases
    with _quiet():
        quantize_static(
            str(src), str(dst), calibration_data_reader=None, calibration_cache_path=str(ranges),
            quant_format=QuantFormat.QDQ, calibrate_method=_ort_method(method),
            op_types_to_quantize=list(op_types) if op_types else None, per_channel=True,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=list(excluded), extra_options=extra,
        )


def quantize_dynamic_int8(src: Path, dst: Path, excluded: Sequence[str]) -> None:
    """Dynamic int8: weights quantized offline, activation ranges computed per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(DYNAMIC_OP_TYPES), per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=list(excluded))


def quantize_onnx(
    ctx: ExportContext, spec: EncoderSpec, src: Path, dst: Path, precision: str, *, flavour: str
) -> Calibration:
    """Write the guarded INT8 graph of `src` to `dst`; returns the manifest's calibration record.

    The graph is quantized as exported (no quant_pre_process: it made the ViT-B/32 INT8 graph slower,
    see benchmarks/results/), so TensorRT parses what was checked here. flavour "onnx": QDQ for
    onnxruntime's CPU kernels (uint8 activations with zero points), or dynamic. flavour "tensorrt":
    symmetric int8 activations and weights (zero point 0), float biases.
    """
    opts = Int8Options.from_options(ctx.options)
    dynamic = precision == "int8-dynamic"
    data = encoder_data(ctx, spec, dynamic=dynamic)
    if dynamic:
        method, candidates = "dynamic", weight_nodes(src, DYNAMIC_OP_TYPES)
        write: Callable[[list[str]], None] = partial(quantize_dynamic_int8, src, dst)
    else:
        method, candidates = opts.method, quantizable_nodes(src, OP_TYPES)
        ranges = compute_ranges(src, spec.input_name, data.calibration, opts.method, OP_TYPES,
                                ctx.workdir / f"int8-{flavour}-{spec.name}" / f"ranges-{opts.method}.json")
        write = partial(quantize_static_qdq, src, dst, ranges, opts.method,
                        symmetric_activations=flavour == "tensorrt")

    def quantize(excluded: list[str]) -> Run:
        write(excluded)
        return run_in_onnxruntime(dst, spec, precision)

    # a default the scheme never quantizes (the Conv stem under int8-dynamic) is not "kept in float"
    defaults = [d for d in clip_float_defaults(src) if d in candidates]
    # TensorRT builds its own engine from this graph: onnxruntime's CPU timings say nothing about it
    timed = opts.speed_pass and flavour == "onnx"
    result = guarded_fast_quantize(quantize, candidates, defaults, data.heldout, opts.budget,
                                   what=f"{spec.name}/{flavour}-{precision}",
                                   kinds=node_kinds(src, candidates) if timed else {})
    return calibration_record(
        method, data, result, opts.budget, defaults, scheme=_scheme(dynamic, flavour),
        op_types=list(DYNAMIC_OP_TYPES if dynamic else OP_TYPES), graph_preprocessing="none (quantized as exported)",
        quantizer="onnxruntime.quantization",
        speed_timed_with="onnxruntime CPUExecutionProvider, batch 1" if timed else None,
    )


def _scheme(dynamic: bool, flavour: str) -> str:
    if dynamic:
        return "int8 weights per channel (symmetric), activations quantized per batch at run time"
    return "QDQ: int8 weights per channel (symmetric), activations per tensor " + (
        "int8 symmetric (zero point 0), biases float" if flavour == "tensorrt" else "uint8 asymmetric")
