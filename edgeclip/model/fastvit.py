"""FastViT "MCi" image towers (MobileCLIP, MobileCLIP2), written natively (no timm at run time).

Module and parameter names follow timm's `fastvit` (`stem.0.conv_kxk.0.conv.weight`,
`stages.2.blocks.0.token_mixer.mixer.identity.running_var`, `final_conv.se.fc1.weight`,
`head.fc.weight`, ...), so an open_clip MobileCLIP state dict loads after dropping its
`visual.trunk.` prefix.

Every multi-branch block is a `Reparameterizable`: its `fuse()` returns the inference form, one
convolution that computes the same function in eval mode (RepVGG / MobileOne structural
reparameterization: each branch's BatchNorm is folded into its kernel, then kernels are summed,
smaller ones zero-padded to the largest, identities written as a centred one-hot kernel).
`fuse_branches` applies it to a whole tower; `edgeclip.model.reparameterize` wraps it for CLIP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.errors import ConfigError
from edgeclip.model.config import VisionConfig
from edgeclip.model.fastvit_config import FastViTConfig
from edgeclip.model.layers import GELU


def identity_kernel(channels: int, groups: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """[channels, channels // groups, k, k]: the kernel of a k x k conv that returns its input."""
    kernel = torch.zeros(channels, channels // groups, k, k, dtype=like.dtype, device=like.device)
    per_group = channels // groups
    kernel[torch.arange(channels), torch.arange(channels) % per_group, k // 2, k // 2] = 1.0
    return kernel


def fold_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel, bias) of conv(kernel, no bias) followed by `bn` in eval mode."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def _pad_to(kernel: torch.Tensor, k: int) -> torch.Tensor:
    p = (k - kernel.shape[-1]) // 2
    return F.pad(kernel, [p, p, p, p])


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    # k // 2 is timm's symmetric padding for every kernel/stride pair these towers use
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias)


class Reparameterizable(nn.Module):
    """A training-form block with an equivalent single-conv inference form."""

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def fuse(self) -> nn.Module:
        raise NotImplementedError


class FusedConv(nn.Module):
    """Inference form of a reparameterizable block: act(se(conv(x)))."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int, groups: int,
                 se: nn.Module | None = None, act: nn.Module | None = None) -> None:
        super().__init__()
        self.reparam_conv = _conv(weight.shape[1] * groups, weight.shape[0], weight.shape[-1], stride, groups, True)
        with torch.no_grad():
            self.reparam_conv.weight.copy_(weight)
            assert self.reparam_conv.bias is not None
            self.reparam_conv.bias.copy_(bias)
        self.se = se if se is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.reparam_conv(x)))


class ConvBN(Reparameterizable):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, k, stride, groups)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv.stride[0]
        if self.conv.kernel_size[0] == 1 and s > 1:
            # the same conv on the subsampled input: torch 2.13's CPU backward of a strided 1x1 conv
            # over 3 channels crashes (segfault) on channels-last input, as decoded image batches are
            x = F.conv2d(x[:, :, ::s, ::s], self.conv.weight, None, 1, 0, 1, self.conv.groups)
            return self.bn(x)
        return self.bn(self.conv(x))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fold_bn(self.conv.weight, self.bn)

    def fuse(self) -> nn.Module:
        return FusedConv(*self.fused(), stride=self.conv.stride[0], groups=self.conv.groups)


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean over H, W)))); the reduced width rounds as timm's."""

    def __init__(self, channels: int, ratio: float, divisor: int) -> None:
        super().__init__()
        reduced = max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class MobileOneBlock(Reparameterizable):
    """k x k conv+BN branches, a 1x1 conv+BN scale branch and a BN identity, summed; then SE, GELU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, *, se: bool = False,
                 act: bool = True, scale_branch: bool = True, conv_branches: int = 1) -> None:
        super().__init__()
        self.k, self.stride, self.groups, self.cin, self.cout = k, stride, groups, cin, cout
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.conv_kxk = nn.ModuleList([ConvBN(cin, cout, k, stride, groups) for _ in range(conv_branches)])
        self.conv_scale = ConvBN(cin, cout, 1, stride, groups) if k > 1 and scale_branch else None
        self.se: nn.Module = SqueezeExcite(cout, 1 / 16, 1) if se else nn.Identity()
        self.act: nn.Module = GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.identity(x) if self.identity is not None else 0.0
        if self.conv_scale is not None:
            out = out + self.conv_scale(x)
        for branch in self.conv_kxk:
            out = out + branch(x)
        assert isinstance(out, torch.Tensor), "a MobileOne block has at least one branch"
        return self.act(self.se(out))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        ref = next(self.parameters())
        kernel = torch.zeros(self.cout, self.cin // self.groups, self.k, self.k, dtype=ref.dtype, device=ref.device)
        bias = torch.zeros(self.cout, dtype=ref.dtype, device=ref.device)
        branches = [b.fused() for b in self.conv_kxk if isinstance(b, ConvBN)]
        if self.conv_scale is not None:
            branches.append(self.conv_scale.fused())
        if self.identity is not None:
            branches.append(fold_bn(identity_kernel(self.cin, self.groups, self.k, ref), self.identity))
        for w, b in branches:
            kernel, bias = kernel + _pad_to(w, self.k), bias + b
        return kernel, bias

    def fuse(self) -> nn.Module:
        return FusedConv(*self.fused(), stride=self.stride, groups=self.groups, se=self.se, act=self.act)


class LargeKernelConv(Reparameterizable):
    """Grouped 7x7 conv+BN plus a 3x3 conv+BN (RepLKNet's reparameterizable large kernel), SE, GELU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, se: bool) -> None:
        super().__init__()
        self.stride, self.groups = stride, cin
        self.large_conv = ConvBN(cin, cout, k, stride, cin)
        self.small_conv = ConvBN(cin, cout, 3, stride, cin)
        self.se: nn.Module = SqueezeExcite(cout, 0.25, 8) if se else nn.Identity()
        self.act = GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.large_conv(x) + self.small_conv(x)))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        (wl, bl), (ws, bs) = self.large_conv.fused(), self.small_conv.fused()
        return wl + _pad_to(ws, wl.shape[-1]), bl + bs

    def fuse(self) -> nn.Module:
        return FusedConv(*self.fused(), stride=self.stride, groups=self.groups, se=self.se, act=self.act)


class LayerScale2d(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RepMixer(Reparameterizable):
    """x + gamma * (mixer(x) - norm(x)), both depthwise MobileOne blocks: one depthwise conv at inference."""

    def __init__(self, dim: int, layer_scale_init: float, k: int = 3) -> None:
        super().__init__()
        self.dim, self.k = dim, k
        self.norm = MobileOneBlock(dim, dim, k, groups=dim, act=False, scale_branch=False, conv_branches=0)
        self.mixer = MobileOneBlock(dim, dim, k, groups=dim, act=False)
        self.layer_scale = LayerScale2d(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        (wm, bm), (wn, bn) = self.mixer.fused(), self.norm.fused()
        gamma = self.layer_scale.gamma
        eye = identity_kernel(self.dim, self.dim, self.k, gamma)
        return eye + gamma.unsqueeze(-1) * (wm - wn), gamma.flatten() * (bm - bn)

    def fuse(self) -> nn.Module:
        return FusedConv(*self.fused(), stride=1, groups=self.dim)


class RepCPE(Reparameterizable):
    """Conditional positional encoding: x + depthwise 7x7 conv(x); the skip folds into the kernel."""

    def __init__(self, dim: int, k: int = 7) -> None:
        super().__init__()
        self.pos_enc = _conv(dim, dim, k, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_enc(x) + x

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = self.pos_enc.weight, self.pos_enc.bias
        assert b is not None
        return w + identity_kernel(w.shape[0], w.shape[0], w.shape[-1], w), b

    def fuse(self) -> nn.Module:
        return FusedConv(*self.fused(), stride=1, groups=self.pos_enc.groups)


class ConvMlp(nn.Module):
    """Depthwise 7x7 conv+BN, then a 1x1-conv MLP with GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv = ConvBN(dim, dim, 7, groups=dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FastViTAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of an NCHW map (timm's names: qkv, proj)."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        n = h * w
        qkv = self.qkv(x.flatten(2).transpose(1, 2)).reshape(-1, n, 3, self.heads, self.head_dim)
        if torch.compiler.is_exporting():  # written out, as in edgeclip.model.clip.Attention
            q = qkv[:, :, 0].transpose(1, 2) * self.head_dim**-0.5
            out = (q @ qkv[:, :, 1].permute(0, 2, 3, 1)).softmax(-1) @ qkv[:, :, 2].transpose(1, 2)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(-1, n, c))
        return out.transpose(1, 2).reshape(-1, c, h, w)


class RepMixerBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, layer_scale_init: float) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim, layer_scale_init)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale = LayerScale2d(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.layer_scale(self.mlp(x))


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, layer_scale_init: float, cfg: FastViTConfig) -> None:
        super().__init__()
        self.norm: nn.Module = LayerNorm2d(dim, eps=1e-5) if cfg.attention_norm == "layernorm" else nn.BatchNorm2d(dim)
        self.token_mixer = FastViTAttention(dim, cfg.head_dim)
        self.layer_scale_1 = LayerScale2d(dim, layer_scale_init)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale_2 = LayerScale2d(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1(self.token_mixer(self.norm(x)))
        return x + self.layer_scale_2(self.mlp(x))


class PatchEmbed(nn.Module):
    """Stride-2 downsampling: a grouped 7x7 large-kernel conv, then a 1x1 MobileOne block."""

    def __init__(self, cin: int, dim: int, se: bool) -> None:
        super().__init__()
        self.proj = nn.Sequential(LargeKernelConv(cin, dim, 7, 2, se=se), MobileOneBlock(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Stage(nn.Module):
    """Downsampling (all stages but the first), a RepCPE before attention blocks, then the blocks."""

    def __init__(self, cfg: FastViTConfig, i: int) -> None:
        super().__init__()
        cin, dim = cfg.widths[max(i - 1, 0)], cfg.widths[i]
        self.downsample: nn.Module = nn.Identity()
        if i > 0:
            self.downsample = PatchEmbed(cin, dim, cfg.se_downsample[i])
        attention = cfg.mixers[i] == "attention"
        self.pos_emb: nn.Module = RepCPE(dim) if attention else nn.Identity()
        self.blocks = nn.Sequential(*[
            AttentionBlock(dim, cfg.mlp_ratio, cfg.layer_scale_init, cfg) if attention
            else RepMixerBlock(dim, cfg.mlp_ratio, cfg.layer_scale_init) for _ in range(cfg.layers[i])
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pos_emb(self.downsample(x)))


class Head(nn.Module):
    def __init__(self, features: int, embed_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class FastViT(nn.Module):
    """[B, 3, H, W] normalised pixels -> [B, embed_dim] (not normalised)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        assert cfg.fastvit is not None
        f = cfg.fastvit
        if f.reparameterized:
            raise ConfigError("this config describes a reparameterized (inference-form) FastViT tower, as exported",
                              fix="build the training form (fastvit.reparameterized false), load its weights, "
                                  "then call edgeclip.model.reparameterize.reparameterize(model)")
        self.cfg = cfg
        w0 = f.widths[0]
        self.stem = nn.Sequential(
            MobileOneBlock(3, w0, 3, 2, scale_branch=f.stem_scale_branch),
            MobileOneBlock(w0, w0, 3, 2, groups=w0, scale_branch=f.stem_scale_branch),
            MobileOneBlock(w0, w0, 1),
        )
        self.stages = nn.Sequential(*[Stage(f, i) for i in range(len(f.layers))])
        self.final_conv = MobileOneBlock(f.widths[-1], f.features, 3, groups=f.widths[-1], se=True)
        self.head = Head(f.features, embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        # timm's scheme: linear layers and the MLPs' convs truncated-normal(0.02), zero bias
        mlp_convs = [m for mlp in self.modules() if isinstance(mlp, ConvMlp) for m in mlp.modules()]
        for m in self.modules():
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and any(m is c for c in mlp_convs)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_conv(self.stages(self.stem(pixels))))


def fuse_branches(module: nn.Module) -> None:
    """In place: replace each reparameterizable block under `module` by its inference form (eval-mode
    statistics). Outer blocks fuse their inner ones themselves (RepMixer's two MobileOne blocks)."""
    for name, child in module.named_children():
        if isinstance(child, Reparameterizable):
            setattr(module, name, child.fuse())
        else:
            fuse_branches(child)
