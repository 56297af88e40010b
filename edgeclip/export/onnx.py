"""ONNX target: one graph per encoder, opset 18, dynamic `batch_size`, single file.

fp16 keeps LayerNormalization, Softmax and the final normalisation in fp32 and keeps fp32
inputs/outputs, so callers never see a dtype change.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from edgeclip import __version__
from edgeclip.bundle import PreprocessConfig
from edgeclip.export.encoders import UINT8_INPUT, EncoderSpec, encoder_spec, image_input
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


def add_uint8_input(path: Path, cfg: PreprocessConfig) -> None:
    """Put the normalisation in front of the graph: its input becomes uint8 [N, S, S, 3] RGB, then
    Cast, Transpose to NCHW, Div, Sub, Div: the float32 operations of `normalize`, in its order.
    Added after quantization, so the INT8 layers are those of the float-input artifact."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    old = g.input[0]
    name, inner = old.name, f"{old.name}_normalized"
    for node in g.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    batch, _, s, _ = (d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim)
    consts = {"pixel_levels": np.asarray(1.0 / cfg.rescale_factor, np.float32),
              "pixel_mean": np.asarray(cfg.mean, np.float32).reshape(1, 3, 1, 1),
              "pixel_std": np.asarray(cfg.std, np.float32).reshape(1, 3, 1, 1)}
    prologue = [
        helper.make_node("Cast", [name], ["pixels_f32"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels_f32"], ["pixels_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Div", ["pixels_nchw", "pixel_levels"], ["pixels_unit"]),
        helper.make_node("Sub", ["pixels_unit", "pixel_mean"], ["pixels_centred"]),
        helper.make_node("Div", ["pixels_centred", "pixel_std"], [inner]),
    ]
    g.input.remove(old)
    g.input.insert(0, helper.make_tensor_value_info(name, TensorProto.UINT8, [batch, s, s, 3]))
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    for node in reversed(prologue):
        g.node.insert(0, node)
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
        iface = None
        if spec.name == "image" and image_input(ctx.options) == UINT8_INPUT:
            add_uint8_input(path, ctx.info.preprocess)
            iface = encoder_spec("image", ctx.info, UINT8_INPUT)
        add_metadata(path, ctx, spec, precision)
        return Built([path.name], onnx_environment(), calibration, checked_with="onnxruntime CPU", interface=iface)
