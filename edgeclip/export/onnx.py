"""ONNX target: one graph per encoder, opset 18, dynamic `batch_size`, single file.

fp16 keeps LayerNormalization, Softmax and the final normalisation in fp32 and keeps fp32
inputs/outputs, so callers never see a dtype change.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from edgeclip import __version__
from edgeclip.export.encoders import EncoderSpec
from edgeclip.export.int8.onnxruntime import quantize_onnx
from edgeclip.export.reference import onnx_environment, reference_onnx
from edgeclip.export.targets import Built, ExportContext

# ops whose fp16 versions lose accuracy (variance, exp, norms); they stay fp32 in fp16 graphs
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceL2", "ReduceSumSquare", "Div", "Erf", "Pow", "Sqrt"]


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


class OnnxTarget:
    name = "onnx"

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        path = folder / "model.onnx"
        src = reference_onnx(ctx, spec)
        calibration = None
        if precision == "fp16":
            to_fp16(src, path)
        elif precision.startswith("int8"):
            calibration = quantize_onnx(ctx, spec, src, path, precision, flavour=self.name)
        else:
            shutil.copyfile(src, path)
        add_metadata(path, ctx, spec, precision)
        return Built([path.name], onnx_environment(), calibration, checked_with="onnxruntime CPU")
