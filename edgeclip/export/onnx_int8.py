"""INT8 ONNX graphs, guarded: onnxruntime QDQ / dynamic (onnx target) and TensorRT-style Q/DQ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.guard import Run, guarded_quantize
from edgeclip.export.int8 import Int8Options, calibration_record, encoder_data
from edgeclip.export.quantize import (
    DYNAMIC_OP_TYPES,
    OP_TYPES,
    clip_float_defaults,
    compute_ranges,
    quantizable_nodes,
    quantize_dynamic_int8,
    quantize_static_qdq,
    weight_nodes,
)
from edgeclip.export.reference import run_in_onnxruntime
from edgeclip.export.targets import ExportContext


def quantize_onnx(
    ctx: ExportContext, spec: EncoderSpec, src: Path, dst: Path, precision: str, *, target: str
) -> dict[str, Any]:
    """Write the guarded INT8 graph of `src` to `dst`; returns the manifest's calibration record.

    target "onnx": QDQ for onnxruntime's CPU kernels (uint8 activations with zero points) after
    quant_pre_process, or dynamic. target "tensorrt": symmetric int8 activations and weights (zero
    point 0), float biases, on the graph as exported so TensorRT parses what was checked here.
    """
    opts = Int8Options.from_options(ctx.options)
    dynamic = precision == "int8-dynamic"
    data = encoder_data(ctx, spec, dynamic=dynamic)
    work = ctx.workdir / f"int8-{target}-{spec.name}"
    work.mkdir(parents=True, exist_ok=True)
    # The graph is quantized as exported (no quant_pre_process: it made the ViT-B/32 INT8 graph
    # slower in a probe here), and TensorRT must parse what was checked.
    graph = src
    defaults = clip_float_defaults(graph)

    def run() -> Run:
        return run_in_onnxruntime(dst, spec)

    if dynamic:
        method, candidates = "dynamic", weight_nodes(graph, DYNAMIC_OP_TYPES)

        def quantize(excluded: list[str]) -> Run:
            quantize_dynamic_int8(graph, dst, excluded)
            return run()
    else:
        method, candidates = opts.method, quantizable_nodes(graph, OP_TYPES)
        ranges = compute_ranges(graph, spec.input_name, data.calibration, opts.method, OP_TYPES,
                                work / f"ranges-{opts.method}.json")

        def quantize(excluded: list[str]) -> Run:
            quantize_static_qdq(graph, dst, ranges, opts.method, excluded, symmetric_activations=target == "tensorrt")
            return run()

    # a default the scheme never quantizes (the Conv stem under int8-dynamic) is not "kept in float"
    defaults = [d for d in defaults if d in candidates]
    result = guarded_quantize(quantize, candidates, defaults, data.heldout, opts.budget,
                              what=f"{spec.name}/{target}-{precision}")
    scheme = ("int8 weights per channel (symmetric), activations quantized per batch at run time" if dynamic else
              "QDQ: int8 weights per channel (symmetric), activations per tensor "
              + ("int8 symmetric (zero point 0), biases float" if target == "tensorrt" else "uint8 asymmetric"))
    return calibration_record(
        method, data, result, opts.budget, defaults, scheme=scheme,
        op_types=list(DYNAMIC_OP_TYPES if dynamic else OP_TYPES), graph_preprocessing="none (quantized as exported)",
        quantizer="onnxruntime.quantization",
    )
