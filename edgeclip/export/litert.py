"""LiteRT target: a .tflite per encoder and precision, for Android, ARM boards and any CPU (XNNPACK).

The float graph comes from Google's own PyTorch converter, `litert-torch` (torch.export -> StableHLO
-> TFLite, no TensorFlow), converted once per encoder and export run. Every other precision is made
from that graph by `ai-edge-quantizer`, so the guard can re-quantize it cheaply with layers left in
float: fp16 casts weights to half (XNNPACK computes in fp32), int8-dynamic stores int8 weights and
quantizes activations at run time, int8 calibrates activations on the shared calibration set.

The batch is static 1, which the NNAPI and GPU delegates need; the runtime loops over a batch.
litert-torch 0.10 cannot lower a symbolic batch through these towers' reshapes (its JAX lowering
needs concrete shapes), so there is no dynamic-batch file. Token ids go in as int32: LiteRT has no
int64 ARG_MAX, which the text tower's end-of-text pooling needs.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from edgeclip import _deps
from edgeclip.errors import ExportError
from edgeclip.export.encoders import EncoderSpec, example_input, export_module, fixed_batch
from edgeclip.export.litert_int8 import quantize_int8, quantize_recipe
from edgeclip.export.targets import Built, ExportContext

STATIC_BATCH = 1
CHECKED_WITH = "LiteRT Interpreter (XNNPACK, CPU)"
WEIGHTS = {"fp32": "fp32", "fp16": "fp16 (computed in fp32)", "int8-dynamic": "int8 (activations int8 at run time)",
           "int8": "int8 weights and activations"}


class LiteRTTarget:
    name = "litert"

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        out = folder / "model.tflite"
        source = float_tflite(ctx, spec)
        calibration = None
        if precision == "fp32":
            shutil.copyfile(source, out)
        elif precision == "int8":
            calibration = quantize_int8(ctx, spec, source, out)
        else:
            quantize_recipe(source, precision, out)
        environment = {**litert_environment(), "source": "torch (litert-torch)", "weights": WEIGHTS[precision],
                       "batch": f"static {STATIC_BATCH}"}
        # the manifest records what the file takes: batch 1, int32 token ids
        return Built(["model.tflite"], environment, calibration, checked_with=CHECKED_WITH,
                     interface=fixed_batch(spec, STATIC_BATCH, ids="int32"))


def float_tflite(ctx: ExportContext, spec: EncoderSpec) -> Path:
    """The fp32 .tflite of an encoder, converted once per export run."""
    key = f"litert-fp32/{spec.name}"
    if key not in ctx.cache:
        out = ctx.workdir / f"{spec.name}-fp32.tflite"
        convert(export_module(spec.name, ctx.model), _example(ctx, spec), out)
        ctx.cache[key] = out
    path: Path = ctx.cache[key]
    return path


def _example(ctx: ExportContext, spec: EncoderSpec) -> torch.Tensor:
    x = example_input(spec.name, ctx.info, batch=STATIC_BATCH)
    return x.to(torch.int32) if spec.name == "text" else x


def convert(module: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    """litert_torch.convert at the example's (static) shape, written to `out`."""
    litert_torch: Any = _deps.require("litert_torch", extra="litert-export", purpose="the litert export target")
    logging.getLogger("litert_torch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about its own internals (torchao, pytree)
        try:
            model = litert_torch.convert(module.eval(), (example,))
        except Exception as e:  # the converter raises many internal types
            raise ExportError(f"litert-torch could not convert the {type(module).__name__}: {e}",
                              fix="export another --target (onnx runs on Android through ONNX Runtime Mobile), "
                                  "or upgrade litert-torch") from e
    model.export(str(out))


def litert_environment() -> dict[str, Any]:
    return {"litert-torch": version("litert-torch"), "ai-edge-litert": version("ai-edge-litert"),
            "ai-edge-quantizer": version("ai-edge-quantizer"), "torch": torch.__version__}
