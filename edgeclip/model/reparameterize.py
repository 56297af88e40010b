"""`reparameterize(model)`: the inference form of a CLIP whose image tower is a FastViT (MobileCLIP).

The training form (multi-branch blocks with BatchNorm) is what checkpoints hold and what trains;
the inference form merges every block's branches into one convolution with BatchNorm folded in,
and is what gets exported. It computes the same function as the training form in eval mode.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from edgeclip.errors import ConfigError
from edgeclip.model.clip import CLIP
from edgeclip.model.config import ModelConfig
from edgeclip.model.fastvit import FastViT, fuse_branches


def in_training_form(cfg: ModelConfig) -> bool:
    """True for a model that has a separate inference form (a FastViT image tower) and is not in it."""
    fastvit = cfg.vision_cfg.fastvit
    return fastvit is not None and not fastvit.reparameterized


def inference_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with its FastViT tower marked reparameterized (the config of `reparameterize`'s result)."""
    fastvit = cfg.vision_cfg.fastvit
    assert fastvit is not None
    vision = dataclasses.replace(cfg.vision_cfg, fastvit=dataclasses.replace(fastvit, reparameterized=True))
    return dataclasses.replace(cfg, vision_cfg=vision)


def reparameterize(model: CLIP) -> CLIP:
    """A copy of `model` in inference form, in eval mode; `model` itself is left as it was.

    Raises ConfigError for a model without an inference form and for one already reparameterized."""
    fastvit = model.cfg.vision_cfg.fastvit
    if fastvit is None:
        raise ConfigError(f"model {model.cfg.name} has no reparameterizable blocks",
                          fix="only FastViT (MobileCLIP) image towers have a separate inference form")
    if fastvit.reparameterized or not isinstance(model.visual, FastViT):
        raise ConfigError(f"model {model.cfg.name} is already reparameterized (its inference form)",
                          fix="reparameterize the training form once; keep the training form for checkpoints "
                              "and fine-tuning")
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        fuse_branches(out.visual)
    out.cfg = inference_config(model.cfg)
    out.visual.cfg = out.cfg.vision_cfg
    return out
