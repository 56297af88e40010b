"""OpenAI CLIP's ModifiedResNet image tower (RN50, RN101, ...).

Differences from torchvision's ResNet, as in OpenAI CLIP / open_clip:
- a three-conv stem with an average pool instead of a max pool;
- anti-aliased downsampling: strided convolutions are replaced by an avgpool before a stride-1 conv;
- the global average pool is replaced by multi-head QKV attention pooling over the feature map.

Parameter names are OpenAI's (`visual.conv1`, `visual.bn1`, `visual.layer1.0.conv1`,
`visual.layer2.0.downsample.0`, `visual.attnpool.q_proj`, ...), so their state dicts load by name.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.model.config import VisionConfig

EXPANSION = 4  # a bottleneck's output has 4x the channels of its 3x3 conv


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        # every conv has stride 1; an avgpool after the 3x3 conv downsamples when stride > 1
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * EXPANSION:
            # OpenAI names the avgpool "-1" so that the conv and BN keep the indices 0 and 1
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * EXPANSION)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean feature (plus position) queries all positions of the map."""

    def __init__(self, grid: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, output_dim]. Only the mean token's output is needed, so only its
        query is computed (same numbers as OpenAI's full multi_head_attention_forward)."""
        b, c = x.shape[0], x.shape[1]
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        n, h = x.shape[1], self.heads
        q = self.q_proj(x[:, :1]).view(b, 1, h, c // h).transpose(1, 2)
        k = self.k_proj(x).view(b, n, h, c // h).transpose(1, 2)
        v = self.v_proj(x).view(b, n, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, 1, C/h]
        return self.c_proj(out.transpose(1, 2).reshape(b, c))


class ModifiedResNet(nn.Module):
    """pixels [B, 3, S, S] -> [B, embed_dim]; S a multiple of 32."""

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        assert isinstance(cfg.layers, tuple), "a ResNet config has per-stage depths"
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w // 2)
        self.conv2 = nn.Conv2d(w // 2, w // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w // 2)
        self.conv3 = nn.Conv2d(w // 2, w, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = w
        stages = []
        for i, depth in enumerate(cfg.layers):
            planes, stride = w * 2**i, 1 if i == 0 else 2
            blocks = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * EXPANSION
            blocks += [Bottleneck(inplanes, planes) for _ in range(1, depth)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(cfg.image_size // 32, w * 32, cfg.heads, embed_dim)

    def init_weights(self) -> None:
        # OpenAI's scheme: attention-pool projections ~ N(0, C^-1/2); each block's last BN
        # starts at zero so that every residual block starts as the identity
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for name, param in stage.named_parameters():
                if name.endswith("bn3.weight"):
                    nn.init.zeros_(param)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(pixels)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
