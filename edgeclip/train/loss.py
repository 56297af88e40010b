"""Contrastive losses, computed in fp32, single-process or with features gathered across ranks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.train.distributed import World, all_gather_with_grad


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    world: World | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over matching (image, text) pairs; pair i is the positive of row i.

    Distributed ("local loss"): each rank scores its own rows against every rank's columns
    (gathered with gradient), labels offset by rank. Averaging gradients over ranks, as DDP
    does, then equals the gradient of the single-process loss on the global batch.
    """
    world = world or World()
    img, txt = image_features.float(), text_features.float()
    all_img, all_txt = all_gather_with_grad(img, world), all_gather_with_grad(txt, world)
    scale = logit_scale.float()
    logits_per_image = scale * img @ all_txt.t()
    logits_per_text = scale * txt @ all_img.t()
    labels = torch.arange(img.shape[0], device=img.device) + world.rank * img.shape[0]
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (Zhai et al. 2023) with its own learnable bias, initialised at -10.

    Use with a logit scale initialised at ln(10) (the trainer does so for --loss siglip).
    """

    def __init__(self) -> None:
        super().__init__()
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
        world: World | None = None,
    ) -> torch.Tensor:
        world = world or World()
        img, txt = image_features.float(), text_features.float()
        all_txt = all_gather_with_grad(txt, world)
        logits = logit_scale.float() * img @ all_txt.t() + self.logit_bias.float()
        n = img.shape[0]
        signs = -torch.ones_like(logits)
        rows = torch.arange(n, device=logits.device)
        signs[rows, rows + world.rank * n] = 1.0  # device indices: CPU ones would be copied over each step
        # each rank owns its rows; the mean over the global batch comes from DDP's averaging
        return -F.logsigmoid(signs * logits).sum() / n


SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
