"""The fp32 ONNX reference of an encoder: exported once per export run, shared by every target that
starts from ONNX (onnx, OpenVINO, TensorRT) and by the INT8 quantizers, and run through the
runtime's own onnxruntime backend. A module of its own so that the quantizers and the targets
import it, never each other."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from edgeclip import _deps
from edgeclip.errors import ExportError
from edgeclip.export.encoders import BATCH, EncoderSpec, example_input, export_module
from edgeclip.export.targets import ExportContext, load_file
from edgeclip.runtime.classifier import Encoder

OPSET = 18  # >= 17 gives one LayerNormalization op instead of a decomposed mean/var chain
MAX_BATCH = 4096


def export_onnx(module: torch.nn.Module, example: torch.Tensor, spec: EncoderSpec, path: Path) -> None:
    """torch.onnx.export (dynamo) to a single file with a symbolic batch dimension."""
    _deps.require("onnxscript", purpose="torch.onnx.export(dynamo=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # torch's exporter emits deprecation noise from its own internals
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[spec.input_name],
                output_names=[spec.output_name],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,  # one self-contained file (models here are < 2 GB)
                verbose=False,
            )
        except Exception as e:  # the exporter raises many internal types
            raise ExportError(f"torch.onnx.export failed for the {spec.name} encoder: {e}") from e
    _drop_stack_traces(path)


STACK_TRACE = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(path: Path) -> None:
    """The exporter records every node's Python stack, with the exporting machine's absolute paths.
    A shipped artifact should not carry those, and with them the same code and weights exported
    from two checkouts give different bytes (and different manifest hashes)."""
    import onnx

    model = onnx.load(str(path))
    for node in [*model.graph.node, *(n for f in model.functions for n in f.node)]:
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def reference_onnx(ctx: ExportContext, spec: EncoderSpec) -> Path:
    """The fp32 graph of an encoder, exported once per export run and shared by targets
    that start from ONNX (onnx fp16, OpenVINO, TensorRT)."""
    key = f"onnx-fp32/{spec.name}"
    if key not in ctx.cache:
        out = ctx.workdir / f"{spec.name}-fp32.onnx"
        export_onnx(export_module(spec.name, ctx.model), example_input(spec.name, ctx.info), spec, out)
        ctx.cache[key] = out
    path: Path = ctx.cache[key]
    return path


def onnx_environment() -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "opset": OPSET, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
    }


def run_in_onnxruntime(path: Path, spec: EncoderSpec, precision: str = "fp32") -> Encoder:
    """The ONNX graph at `path` as a callable x -> embeddings, through the runtime's onnxruntime backend."""
    return load_file(path, spec, "onnx", precision)
