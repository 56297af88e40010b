"""ONNX target: one graph per encoder, opset 18, dynamic `batch_size`, single file.

fp16 keeps LayerNormalization, Softmax and the final normalisation in fp32 and keeps fp32
inputs/outputs, so callers never see a dtype change.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from edgeclip import _deps
from edgeclip.bundle import Artifact
from edgeclip.errors import ExportError
from edgeclip.export.encoders import BATCH, EncoderSpec, example_input, export_module
from edgeclip.export.targets import ExportContext, validated_artifact
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.backends.onnxruntime import OnnxRuntimeBackend

OPSET = 18  # >= 17 gives one LayerNormalization op instead of a decomposed mean/var chain
MAX_BATCH = 4096
# ops whose fp16 versions lose accuracy (variance, exp, norms); they stay fp32 in fp16 graphs
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceL2", "ReduceSumSquare", "Div", "Erf", "Pow", "Sqrt"]


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


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about values clipped to the fp16 range
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS)
    onnx.save(half, str(dst))


def add_metadata(path: Path, ctx: ExportContext, spec: EncoderSpec, precision: str) -> None:
    """Mirror key manifest fields into the graph's metadata_props (readable by any ONNX tool)."""
    import onnx

    from edgeclip import __version__

    model = onnx.load(str(path))
    p = ctx.info.preprocess
    props = {
        "edgeclip.version": __version__,
        "edgeclip.model": ctx.info.model.name,
        "edgeclip.encoder": spec.name,
        "edgeclip.precision": precision,
        "edgeclip.embed_dim": str(ctx.info.model.embed_dim),
        "edgeclip.image_size": str(p.image_size),
        "edgeclip.mean": ",".join(map(str, p.mean)),
        "edgeclip.std": ",".join(map(str, p.std)),
        "edgeclip.context_length": str(ctx.info.tokenizer.context_length),
    }
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def onnx_environment() -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "opset": OPSET, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
    }


def run_in_onnxruntime(path: Path, spec: EncoderSpec) -> Any:
    """A callable x -> embeddings through the runtime's own onnxruntime backend."""
    probe = Artifact.probe(spec.name, "onnx", "probe", list(spec.inputs), list(spec.outputs))
    backend = OnnxRuntimeBackend(path, probe, BackendOptions())
    return lambda x: backend.infer({spec.input_name: x})[spec.output_name]


class OnnxTarget:
    name = "onnx"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int8-dynamic")

    def export(self, ctx: ExportContext, spec: EncoderSpec, precision: str) -> Artifact:
        rel_dir, folder = ctx.artifact_dir(spec.name, self.name, precision)
        path = folder / "model.onnx"
        src = reference_onnx(ctx, spec)
        calibration = None
        if precision == "fp16":
            to_fp16(src, path)
        elif precision.startswith("int8"):
            from edgeclip.export.onnx_int8 import quantize_onnx

            calibration = quantize_onnx(ctx, spec, src, path, precision, target=self.name)
        else:
            shutil.copyfile(src, path)
        add_metadata(path, ctx, spec, precision)
        artifact = validated_artifact(
            ctx, spec, self.name, precision, rel_dir, [f"{rel_dir}/model.onnx"],
            run=run_in_onnxruntime(path, spec),
            checked_with="onnxruntime CPU",
            environment=onnx_environment(),
        )
        artifact.calibration = calibration
        return artifact
