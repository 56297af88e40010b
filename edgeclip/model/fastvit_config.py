"""The FastViT "MCi" image tower's configuration (MobileCLIP / MobileCLIP2), torch-free.

Stage layouts are those of timm's `fastvit_mci0` ... `fastvit_mci4` (open_clip's MobileCLIP
configs build their image towers from them): a stride-4 MobileOne stem, stages of RepMixer
blocks, attention stages at the end (each preceded by a 7x7 RepCPE), a 3x3 MobileOne conv to
twice the last width with squeeze-excite, average pooling and a linear head to the embedding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from edgeclip.errors import ConfigError

MIXERS = ("repmixer", "attention")
ATTENTION_NORMS = ("batchnorm", "layernorm")


@dataclass(frozen=True)
class FastViTConfig:
    layers: tuple[int, ...]  # blocks per stage; stage 0 keeps the stem's resolution, each later one halves it
    widths: tuple[int, ...]  # channels per stage; the stem has widths[0]
    mixers: tuple[str, ...]  # per stage: "repmixer" or "attention" (attention stages get a RepCPE)
    se_downsample: tuple[bool, ...]  # per stage: squeeze-excite in its downsampling conv
    mlp_ratio: float = 3.0
    attention_norm: str = "batchnorm"  # MCi0-2 use BatchNorm before attention, MCi3-4 a channel LayerNorm
    stem_scale_branch: bool = True  # MCi3-4's stem has no 1x1 scale branch
    head_dim: int = 32
    layer_scale_init: float = 1e-5
    # True only in the config of an inference-form (reparameterized) tower, as exported: branches
    # merged, BatchNorm folded. Checkpoints hold the training form (False).
    reparameterized: bool = False

    def __post_init__(self) -> None:
        n = len(self.layers)
        if n < 2 or any(len(t) != n for t in (self.widths, self.mixers, self.se_downsample)):
            raise ConfigError("vision_cfg.fastvit needs layers, widths, mixers and se_downsample of one length >= 2")
        if min(self.layers) < 1 or min(self.widths) < 1:
            raise ConfigError(f"vision_cfg.fastvit layers and widths must be >= 1, got {self.layers}, {self.widths}")
        bad = [m for m in self.mixers if m not in MIXERS]
        if bad:
            raise ConfigError(f"unknown vision_cfg.fastvit mixer {bad[0]!r}", fix=f"use one of {list(MIXERS)}")
        if self.attention_norm not in ATTENTION_NORMS:
            raise ConfigError(f"unknown vision_cfg.fastvit attention_norm {self.attention_norm!r}",
                              fix=f"use one of {list(ATTENTION_NORMS)}")
        for w, m in zip(self.widths, self.mixers, strict=True):
            if m == "attention" and w % self.head_dim:
                raise ConfigError(f"attention stage width {w} is not a multiple of head_dim {self.head_dim}")

    @property
    def stride(self) -> int:
        """Input pixels per output cell: the stem's 4, then 2 per later stage."""
        return 4 * 2 ** (len(self.layers) - 1)

    @property
    def features(self) -> int:
        """Channels of the last conv, before pooling (twice the last stage's width)."""
        return 2 * self.widths[-1]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FastViTConfig:
        tuples = {"layers": int, "widths": int, "mixers": str, "se_downsample": bool}
        kw: dict[str, Any] = {k: tuple(tuples[k](x) for x in v) if k in tuples else v for k, v in d.items()}
        return cls(**kw)
