"""Contrastive losses, computed in fp32, single-process or with features gathered across ranks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.train.distributed import World, gather_padded


def _global_mean(local_sum: torch.Tensor, n: int, valid: torch.Tensor | None, world: World) -> torch.Tensor:
    """This rank's share of the mean over the global batch: averaged over ranks (as DDP averages
    gradients) it is the sum over every real row divided by their number, also when ranks hold
    different numbers of rows. The count stays on the device."""
    count = valid.sum() if valid is not None else n * world.size
    return local_sum * world.size / count


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    world: World | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over matching (image, text) pairs; pair i is the positive of row i.

    Distributed ("local loss"): each rank scores its own rows against every rank's columns
    (gathered with gradient), labels offset by rank. Averaging gradients over ranks, as DDP
    does, then equals the gradient of the single-process loss on the global batch. `rows`: the
    per-rank batch size, when a rank may hold fewer (see gather_padded); padding is never a
    candidate.
    """
    world = world or World()
    img, txt = image_features.float(), text_features.float()
    both, valid, offset = gather_padded(torch.cat([img, txt], dim=1), world, rows)  # one collective
    all_img, all_txt = both.split([img.shape[1], txt.shape[1]], dim=1)
    scale = logit_scale.float()
    logits_per_image = scale * img @ all_txt.t()
    logits_per_text = scale * txt @ all_img.t()
    if valid is not None:
        logits_per_image = logits_per_image.masked_fill(valid == 0, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(valid == 0, float("-inf"))
    labels = torch.arange(img.shape[0], device=img.device) + offset
    local = F.cross_entropy(logits_per_image, labels, reduction="sum") + F.cross_entropy(
        logits_per_text, labels, reduction="sum")
    return _global_mean(local / 2, img.shape[0], valid, world)


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (Zhai et al. 2023) with its own learnable bias, initialised at -10.

    Use with a logit scale initialised at ln(10) (the trainer does so for --loss siglip).
    """

    def __init__(self) -> None:
        super().__init__()
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
        world: World | None = None, rows: int | None = None,
    ) -> torch.Tensor:
        """-1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)) over the global batch B, z_ij = 1
        for matching pairs, -1 otherwise; each rank owns its rows (see clip_loss for `rows`)."""
        world = world or World()
        img, txt = image_features.float(), text_features.float()
        all_txt, valid, offset = gather_padded(txt, world, rows)
        logits = logit_scale.float() * img @ all_txt.t() + self.logit_bias.float()
        n = img.shape[0]
        signs = -torch.ones_like(logits)
        rows_here = torch.arange(n, device=logits.device)
        signs[rows_here, rows_here + offset] = 1.0  # device indices: CPU ones would be copied over each step
        terms = -F.logsigmoid(signs * logits)
        if valid is not None:
            terms = terms * valid  # padding columns are no pair at all
        return _global_mean(terms.sum(), n, valid, world)


SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
