"""Declarative description of the two exported encoders (names follow the HF/optimum CLIP
convention: `pixel_values` -> `image_embeds`, `input_ids` -> `text_embeds`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeclip.bundle import TensorSpec
from edgeclip.model.checkpoint import CheckpointInfo
from edgeclip.model.clip import CLIP, ImageEncoder, TextEncoder

BATCH = "batch_size"
ENCODERS = ("image", "text")


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


def encoder_spec(encoder: str, info: CheckpointInfo) -> EncoderSpec:
    d = info.model.embed_dim
    if encoder == "image":
        s = info.preprocess.image_size
        return EncoderSpec(
            "image",
            (TensorSpec("pixel_values", "float32", (BATCH, 3, s, s)),),
            (TensorSpec("image_embeds", "float32", (BATCH, d)),),
        )
    n = info.tokenizer.context_length
    return EncoderSpec(
        "text",
        (TensorSpec("input_ids", "int64", (BATCH, n)),),
        (TensorSpec("text_embeds", "float32", (BATCH, d)),),
    )


def encoder_module(encoder: str, model: CLIP) -> torch.nn.Module:
    return (ImageEncoder(model) if encoder == "image" else TextEncoder(model)).eval()


def example_input(encoder: str, info: CheckpointInfo, batch: int = 2) -> torch.Tensor:
    """A batch >= 2 example: a batch-1 example makes the exported batch dimension static."""
    g = torch.Generator().manual_seed(0)
    if encoder == "image":
        s = info.preprocess.image_size
        return torch.randn(batch, 3, s, s, generator=g)
    t = info.tokenizer
    ids = torch.randint(1, t.sot_id, (batch, t.context_length), generator=g)
    ids[:, 0] = t.sot_id
    ids[:, -1] = t.eot_id
    return ids
