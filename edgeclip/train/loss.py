"""Contrastive losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) pairs, computed in fp32.

    Features are L2-normalised [B, D]; pair i is the positive for row and column i.
    """
    img, txt = image_features.float(), text_features.float()
    logits = logit_scale.float() * img @ txt.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
