"""OpenVINO target: IR (.xml + .bin) converted from the encoder's torch module.

Converted from torch, not from the ONNX reference: OpenVINO's PyTorch frontend traces the module
(so attention stays torch's SDPA and becomes one ScaledDotProductAttention op, which the CPU plugin
runs fused), while the ONNX reference spells attention out for onnxruntime's fusions. On ViT-B/32
the INT8 IR from the ONNX file ran slower than one from torch, with the same NNCF recipe.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip import _deps
from edgeclip.bundle import PreprocessConfig
from edgeclip.export.encoders import UINT8_INPUT, EncoderSpec, encoder_spec, example_input, export_module, image_input
from edgeclip.export.int8.openvino import quantize_openvino
from edgeclip.export.targets import Built, ExportContext
from edgeclip.model.build import Model
from edgeclip.model.clip import Attention, PatchEmbedding, ResidualBlock, VisionTransformer, split_in_proj
from edgeclip.runtime.backends.base import BackendOptions

# parity is checked at fp32 inference precision: the CPU default may be bf16 (see BackendOptions)
VALIDATION_HINT = "f32"
SOURCE = f"torch {torch.__version__} module (OpenVINO's PyTorch frontend, traced)"


class SeparateQKV(nn.Module):
    """`clip.Attention` with q, k and v as three projections (the same weights, sliced), on SDPA.

    With one fused in_proj, NNCF quantizes SDPA's query and key after the Split of a float output:
    the CPU plugin then runs two standalone FakeQuantize ops plus the Split and Reshapes in float per
    block. With three projections each FakeQuantize fuses into its FullyConnected (int8 output) and
    the reshapes run in int8, as in transformers' CLIP (the form OpenVINO's own recipe converts)."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.heads = attn.heads
        self.q_proj, self.k_proj, self.v_proj = split_in_proj(attn)
        self.out_proj = attn.out_proj

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, d = x.shape[1:]
        q, k, v = (p(x).reshape(-1, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(-1, n, d))


def openvino_module(encoder: str, model: Model) -> nn.Module:
    """`export_module` with every ViT/text attention block's q, k and v projected separately, and a
    ViT's patch stem as a matmul (PatchEmbedding: 1.025x at batch 1 on ViT-B/32 int8 against the
    strided convolution, benchmarks/results/export_forms_speed.json), on a copy."""
    module = copy.deepcopy(export_module(encoder, model))
    for block in module.modules():
        if isinstance(block, ResidualBlock) and isinstance(block.attn, Attention):
            block.attn = SeparateQKV(block.attn)  # type: ignore[assignment]
        if isinstance(block, VisionTransformer) and block.cfg.stem == "patch":
            block.conv1 = PatchEmbedding(block.conv1)  # type: ignore[assignment]
    return module


def torch_model(ctx: ExportContext, spec: EncoderSpec) -> Any:
    """The fp32 ov.Model of an encoder with a float input, converted once per export run (the
    INT8 guard quantizes copies of it). Tensor names follow `spec`; the batch stays dynamic."""
    key = f"openvino-fp32/{spec.name}"
    if key not in ctx.cache:
        ov: Any = _deps.require("openvino", extra="openvino", purpose="the openvino export target")
        module = openvino_module(spec.name, ctx.model)
        shape = [-1, *(int(d) for d in spec.inputs[0].shape[1:])]
        with torch.no_grad():
            model = ov.convert_model(module, example_input=example_input(spec.name, ctx.info), input=[shape])
        model.inputs[0].get_tensor().set_names({spec.input_name})
        model.outputs[0].get_tensor().set_names({spec.output_name})
        ctx.cache[key] = model
    return ctx.cache[key]


def with_uint8_input(model: Any, cfg: PreprocessConfig) -> Any:
    """The model behind a PrePostProcessor prologue: uint8 NHWC pixels are converted to float32,
    transposed to NCHW and normalised with the same operations, in the same order, as `normalize`.
    Added after quantization, so the INT8 layers are those of the float-input artifact."""
    ov: Any = _deps.require("openvino", extra="openvino", purpose="the openvino export target")
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    inp = ppp.input()
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    inp.model().set_layout(ov.Layout("NCHW"))
    steps = inp.preprocess().convert_element_type(ov.Type.f32)
    steps.scale(float(1.0 / cfg.rescale_factor)).mean(list(cfg.mean)).scale(list(cfg.std))
    return ppp.build()


class OpenVinoTarget:
    name = "openvino"

    def build(self, ctx: ExportContext, spec: EncoderSpec, precision: str, folder: Path) -> Built:
        ov: Any = _deps.require("openvino", extra="openvino", purpose="the openvino export target")
        xml = folder / "model.xml"
        calibration = None
        if precision == "int8":
            calibration, model = quantize_openvino(ctx, spec, torch_model(ctx, spec), folder, VALIDATION_HINT)
        else:
            model = torch_model(ctx, spec).clone()
        iface = None
        if spec.name == "image" and image_input(ctx.options) == UINT8_INPUT:
            model, iface = with_uint8_input(model, ctx.info.preprocess), encoder_spec("image", ctx.info, UINT8_INPUT)
        # fp16 stores weights in half precision; compute precision is the device's choice
        ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
        return Built(
            ["model.xml", "model.bin"], {"openvino": ov.__version__, "source": SOURCE, "weights": precision},
            calibration, checked_with=f"OpenVINO CPU (INFERENCE_PRECISION_HINT={VALIDATION_HINT})",
            options=BackendOptions(precision_hint=VALIDATION_HINT), interface=iface,
        )
