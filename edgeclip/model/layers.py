"""Layers shared by the image and text towers."""

from __future__ import annotations

import math

import torch
from torch import nn


class GELU(nn.GELU):
    """Exact (erf) GELU. Under torch.export it is written out as x * 0.5 * (1 + erf(x / sqrt 2)),
    the same function in the op order onnxruntime fuses into one Gelu / BiasGelu kernel; the order
    nn.GELU exports to is left as five separate ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        return super().forward(x)
