"""Declarative description of the two exported encoders (names follow the HF/optimum CLIP
convention: `pixel_values` -> `image_embeds`, `input_ids` -> `text_embeds`)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgeclip.bundle import PreprocessConfig, TensorSpec
from edgeclip.errors import ConfigError
from edgeclip.model.build import Model, encoder_of
from edgeclip.model.checkpoint import CheckpointInfo
from edgeclip.model.clip import CLIP, ImageEncoder, TextEncoder, VisionTransformer, pooled_last_block
from edgeclip.model.config import ModelConfig
from edgeclip.model.reparameterize import in_training_form, inference_config, reparameterize

BATCH = "batch_size"
ENCODERS = ("image", "text")
FLOAT_INPUT, UINT8_INPUT = "float32", "uint8"
IMAGE_INPUTS = (FLOAT_INPUT, UINT8_INPUT)


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # "image" | "text"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_name(self) -> str:
        return self.outputs[0].name


def image_input(options: Mapping[str, Any]) -> str:
    """The image artifacts' input (`--image-input`): float32 NCHW normalised by the caller, or
    uint8 NHWC resized pixels that the graph converts and normalises itself."""
    value = str(options.get("image_input") or FLOAT_INPUT)
    if value not in IMAGE_INPUTS:
        raise ConfigError(f"unknown --image-input '{value}'", fix=f"use one of: {', '.join(IMAGE_INPUTS)}")
    return value


def encoder_spec(encoder: str, info: CheckpointInfo, pixels: str = FLOAT_INPUT) -> EncoderSpec:
    d = info.model.embed_dim
    if encoder == "image":
        s = info.preprocess.image_size
        inp = (TensorSpec("pixel_values", "uint8", (BATCH, s, s, 3), layout="NHWC") if pixels == UINT8_INPUT
               else TensorSpec("pixel_values", "float32", (BATCH, 3, s, s)))
        return EncoderSpec("image", (inp,), (TensorSpec("image_embeds", "float32", (BATCH, d)),))
    n = info.tokenizer.context_length
    return EncoderSpec(
        "text",
        (TensorSpec("input_ids", "int64", (BATCH, n)),),
        (TensorSpec("text_embeds", "float32", (BATCH, d)),),
    )


def fixed_batch(spec: EncoderSpec, batch: int | str = 1, ids: str | None = None) -> EncoderSpec:
    """`spec` as an artifact with a static `batch` (or BATCH) records it; `ids`: the dtype its graph
    takes token ids in, where not int64 (LiteRT and CoreML interfaces have no 64-bit integers)."""
    inp, out = spec.inputs[0], spec.outputs[0]
    dtype = ids if ids and spec.name == "text" else inp.dtype
    return EncoderSpec(
        spec.name,
        (dataclasses.replace(inp, dtype=dtype, shape=(batch, *inp.shape[1:])),),
        (dataclasses.replace(out, shape=(batch, *out.shape[1:])),),
    )


def encoder_module(encoder: str, model: Model) -> torch.nn.Module:
    return encoder_of(encoder, model).eval()


def export_config(cfg: ModelConfig) -> ModelConfig:
    """The config of what `export_module` exports, as the manifest records it: a FastViT tower's
    says `reparameterized: true`."""
    return inference_config(cfg) if in_training_form(cfg) else cfg


def export_module(encoder: str, model: Model) -> torch.nn.Module:
    """The module that gets exported: `encoder_module` of the inference form (FastViT towers:
    `reparameterize`), with every remaining BatchNorm folded into the conv before it, and the last
    block of a ViT / CLIP text tower run for its pooled token alone (class token / end-of-text: the
    only token the tower reads after it); all on a copy. Runtimes fold Conv+BN in float graphs
    themselves, but not once the conv is quantized: the int8 edge stem ran BatchNorm as separate
    Mul/Add ops around QLinearConv, and the GELU between them stayed unfused."""
    if encoder == "image" and isinstance(model, CLIP) and in_training_form(model.cfg):
        model = reparameterize(model)
    module = encoder_module(encoder, model)
    if encoder != "image":
        if isinstance(module, TextEncoder):  # pooled at the end-of-text token
            module.transformer = pooled_last_block(copy.deepcopy(module.transformer))
        return module
    fold = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.visual.modules())
    vit = isinstance(model.visual, VisionTransformer)
    if fold or vit:
        assert isinstance(module, ImageEncoder)
        visual = copy.deepcopy(model.visual).eval()
        visual = fold_batchnorm(visual) if fold else visual
        if isinstance(visual, VisionTransformer):  # pooled at the class token
            pooled_last_block(visual.transformer)
        module.visual = visual  # type: ignore[assignment]
    return module


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode BatchNorm2d into the Conv2d that feeds it, in place: consecutive
    (Conv2d, BatchNorm2d) in a Sequential, and ModifiedResNet's convN -> bnN attributes."""
    for m in list(module.modules()):
        pairs: list[tuple[str, str]] = []
        if isinstance(m, torch.nn.Sequential):
            names = list(m._modules)
            pairs += list(itertools.pairwise(names))
        pairs += [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
        for conv_name, bn_name in pairs:
            conv, bn = m._modules.get(conv_name), m._modules.get(bn_name)
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                m._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                m._modules[bn_name] = torch.nn.Identity()
    return module


def example_input(encoder: str, info: CheckpointInfo, batch: int = 2) -> torch.Tensor:
    """A batch >= 2 example: a batch-1 example makes the exported batch dimension static."""
    g = torch.Generator().manual_seed(0)
    if encoder == "image":
        s = info.preprocess.image_size
        return torch.randn(batch, 3, s, s, generator=g)
    t = info.tokenizer
    # argmax (eot) pooling needs every other id below the end token; last-position pooling does not
    high = t.sot_id if t.pooling == "eot" else info.model.text_cfg.vocab_size
    ids = torch.randint(1, high, (batch, t.context_length), generator=g)
    ids[:, 0] = t.sot_id if t.sot_id >= 0 else ids[:, 0]
    ids[:, -1] = t.eot_id if t.eot_id >= 0 else ids[:, -1]
    return ids


def takes_uint8(spec: EncoderSpec) -> bool:
    return spec.inputs[0].dtype == UINT8_INPUT


def uint8_pixels(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """float32 [N, 3, S, S] from `normalize` -> the uint8 [N, S, S, 3] RGB pixels it came from.

    Exact for pixels that came from uint8 images (probes, calibration and held-out images all
    do): undoing the normalisation lands within 1e-4 of an integer, far from the 0.5 rounding edge."""
    mean = np.asarray(cfg.mean, dtype=np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(cfg.std, dtype=np.float64).reshape(1, 3, 1, 1)
    levels = (pixels.astype(np.float64) * std + mean) / cfg.rescale_factor
    return np.clip(np.rint(levels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()
