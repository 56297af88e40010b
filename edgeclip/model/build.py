"""One constructor for every model family: a config's `family` picks the class."""

from __future__ import annotations

from typing import TypeAlias

from torch import nn

from edgeclip.model.clip import CLIP, ImageEncoder, TextEncoder
from edgeclip.model.config import ModelConfig, get_config
from edgeclip.model.siglip import SigLIP, SiglipImageEncoder, SiglipTextEncoder
from edgeclip.runtime.scoring import Scoring

Model: TypeAlias = CLIP | SigLIP


def build_model(name_or_cfg: str | ModelConfig) -> Model:
    """A freshly initialised model for a registered name or a config."""
    cfg = get_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    return SigLIP(cfg) if cfg.family == "siglip" else CLIP(cfg)


def encoder_of(encoder: str, model: Model) -> nn.Module:
    """The exported half of `model`: "image" (pixel_values -> image_embeds) or "text"
    (input_ids -> text_embeds), both L2-normalised."""
    if isinstance(model, SigLIP):
        return SiglipImageEncoder(model) if encoder == "image" else SiglipTextEncoder(model)
    return ImageEncoder(model) if encoder == "image" else TextEncoder(model)


def scoring_of(model: Model) -> Scoring:
    """The rule the model was trained for: SigLIP's sigmoid with its learnt bias, CLIP's softmax."""
    scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
    if isinstance(model, SigLIP):
        return Scoring("sigmoid", scale, float(model.logit_bias.detach().reshape(-1)[0]))
    return Scoring("softmax", scale)
