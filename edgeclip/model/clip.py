"""CLIP in PyTorch: ViT (or ModifiedResNet) image tower, causal text transformer, split encoders.

Parameter names follow OpenAI CLIP (`visual.conv1`, `visual.transformer.resblocks.N.attn.
in_proj_weight`, `text_projection`, `logit_scale`, ...) so OpenAI / open_clip state dicts load
by name. Tensors are batch-first inside; the state dict does not depend on that.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.model.config import ModelConfig, TextConfig, VisionConfig
from edgeclip.model.fastvit import FastViT
from edgeclip.model.layers import GELU
from edgeclip.model.resnet import ModifiedResNet

# Added to masked attention logits. Finite on purpose: -inf turns into NaN once a graph is
# run in fp16 or quantized (a zero point computed from -inf), and -1e4 is already exp()-zero.
MASK_VALUE = -1.0e4


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, on SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, d = x.shape[1:]
        h, hd = self.heads, d // self.heads
        # -1 for the batch: an exported graph then reshapes to constant shapes, with no
        # Shape/Gather/Concat chain computing the batch size at run time
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).reshape(-1, n, 3, h, hd)
        if torch.compiler.is_exporting():
            # SDPA written out: torch's ONNX decomposition of SDPA transposes K through a
            # dynamic-shape Reshape chain and scales Q and K separately (8 extra ops per block)
            q = qkv[:, :, 0].transpose(1, 2) * hd**-0.5
            k = qkv[:, :, 1].permute(0, 2, 3, 1)
            v = qkv[:, :, 2].transpose(1, 2)
            logits = q @ k if mask is None else q @ k + mask
            out = logits.softmax(-1) @ v
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(-1, n, d))


def split_in_proj(attn: Attention) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The q, k and v projections of `attn`'s fused in_proj, as three Linear layers (copies)."""
    d = attn.out_proj.in_features
    q, k, v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
    with torch.no_grad():
        for i, proj in enumerate((q, k, v)):
            proj.weight.copy_(attn.in_proj_weight[i * d : (i + 1) * d])
            proj.bias.copy_(attn.in_proj_bias[i * d : (i + 1) * d])
    return q, k, v


class ResidualBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = round(width * mlp_ratio)  # round: an inferred ratio such as 64 / 24 is inexact
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        act: nn.Module = QuickGELU() if quick_gelu else GELU()
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class FirstTokenBlock(nn.Module):
    """A ResidualBlock computed for one pooled token per row only: every token is still a key and a
    value, but only the pooled one is a query and goes through the residual adds and the MLP.

    Exact wherever nothing after the block reads the other tokens: the last block of a ViT pooled at
    its class token (the first token), or of a text tower pooled at its end-of-text token (`index`,
    one position per row, with that row of the causal mask). It skips the query and output
    projections, the attention rows and the MLP of every other token (6.6 % of ViT-B/32's image
    multiply-adds). q, k and v are separate projections (the form OpenVINO's INT8 wants: see
    export/openvino.py's SeparateQKV)."""

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        if not isinstance(block.attn, Attention):
            raise TypeError(f"FirstTokenBlock wraps a clip.ResidualBlock, not one with {type(block.attn).__name__}")
        attn = block.attn
        self.heads = attn.heads
        self.ln_1, self.ln_2, self.mlp, self.out_proj = block.ln_1, block.ln_2, block.mlp, attn.out_proj
        self.q_proj, self.k_proj, self.v_proj = split_in_proj(attn)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, n, d] -> [B, 1, d]: the first token, or the token at `index` [B] of each row."""
        n, d = x.shape[1:]
        h = self.heads
        hd = d // h
        y = self.ln_1(x)
        if index is None:
            if mask is not None:
                raise ValueError("FirstTokenBlock needs the pooled positions (index) under a mask")
            kept, y_kept, rows = x[:, :1], y[:, :1], None
        else:
            batch = torch.arange(x.shape[0], device=x.device)
            kept, y_kept = x[batch, index].unsqueeze(1), y[batch, index].unsqueeze(1)
            rows = None if mask is None else mask[index].unsqueeze(1).unsqueeze(1)  # [B, 1, 1, n]
        q = self.q_proj(y_kept).reshape(-1, 1, h, hd).transpose(1, 2)
        k, v = (p(y).reshape(-1, n, h, hd).transpose(1, 2) for p in (self.k_proj, self.v_proj))
        if torch.compiler.is_exporting():  # written out, as in Attention
            logits = (q * hd**-0.5) @ k.transpose(2, 3)
            out = (logits if rows is None else logits + rows).softmax(-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=rows)
        x = kept + self.out_proj(out.transpose(1, 2).reshape(-1, 1, d))
        return x + self.mlp(self.ln_2(x))


class PatchEmbedding(nn.Module):
    """A patch stem's conv1 (kernel = stride = patch size, no bias) as one matmul over flattened
    patches: the same arithmetic, returning tokens [B, g*g, W]. OpenVINO's CPU plugin runs it as an
    int8 FullyConnected instead of a strided convolution. The weight keeps conv1's name."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != conv.stride or conv.bias is not None or conv.padding != (0, 0):
            raise ValueError("PatchEmbedding replaces a bias-free conv whose kernel equals its stride")
        self.patch = int(conv.kernel_size[0])
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, p = x.shape[1], self.patch
        gh, gw = x.shape[2] // p, x.shape[3] // p
        patches = x.reshape(-1, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, gh * gw, c * p * p)
        return F.linear(patches, self.weight)


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            [ResidualBlock(width, heads, mlp_ratio, quick_gelu, eps) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x

    def init_weights(self) -> None:
        # open_clip's scheme: residual projections scaled down with depth
        proj_std = (self.width**-0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            assert isinstance(block, ResidualBlock)
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            fc, proj = block.mlp.c_fc, block.mlp.c_proj
            assert isinstance(fc, nn.Linear) and isinstance(proj, nn.Linear)
            nn.init.normal_(fc.weight, std=fc_std)
            nn.init.normal_(proj.weight, std=proj_std)


class VisionTransformer(nn.Module):
    """OpenAI's ViT; with the timm options of VisionConfig, also the ViTs of MobileCLIP-B / -L-14."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, quick_gelu: bool) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        if cfg.stem != "patch":
            self.stem, cin = _conv_stem(cfg)
            # the conv stem's last conv: 3x3/2; the mci stem's: 2x2/2 with bias
            k, pad = (3, 1) if cfg.stem == "conv" else (2, 0)
            self.conv1 = nn.Conv2d(cin, w, kernel_size=k, stride=2, padding=pad, bias=cfg.stem == "mci")
        else:
            self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = w**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid**2 + int(cfg.pos_embed_class), w))
        self.ln_pre: nn.Module = nn.LayerNorm(w, eps=cfg.ln_eps) if cfg.ln_pre else nn.Identity()
        assert isinstance(cfg.layers, int), "a ViT config has one depth"
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, quick_gelu, cfg.ln_eps)
        self.ln_post = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(w, embed_dim))
        self.proj_bias = nn.Parameter(torch.zeros(embed_dim)) if cfg.proj_bias else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels
        if self.cfg.stem != "patch":
            x = self.stem(x)
        x = self.conv1(x)  # [B, W, g, g]
        # -> [B, g*g, W]; a PatchEmbedding (OpenVINO's export form of the patch stem) gives tokens already
        x = x if x.dim() == 3 else x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = self.positional_embedding.to(x.dtype)
        x = torch.cat([cls, x], dim=1) + pos if self.cfg.pos_embed_class else torch.cat([cls, x + pos], dim=1)
        x = self.transformer(self.ln_pre(x))
        out = self.ln_post(x[:, 0]) @ self.proj
        return out if self.proj_bias is None else out + self.proj_bias


def pooled_last_block(transformer: Transformer) -> Transformer:
    """`transformer` (modified in place) with its last block computed for the pooled token only (a
    ViT's class token, a CLIP text tower's end-of-text token): the same embeddings, since the tower
    reads nothing else after that block (see FirstTokenBlock)."""
    last = transformer.resblocks[-1]
    if isinstance(last, ResidualBlock):
        transformer.resblocks[-1] = FirstTokenBlock(last)
    return transformer


def _conv_stem(cfg: VisionConfig) -> tuple[nn.Sequential, int]:
    """conv+BN+GELU layers with cfg.stem_channels (3x3/2 each, or 4x4/4 then 2x2/2 for "mci");
    returns them and their output channels."""
    convs: list[nn.Module] = []
    cin = 3
    for i, cout in enumerate(cfg.stem_channels):
        conv = (nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False) if cfg.stem == "conv"
                else nn.Conv2d(cin, cout, 4 if i == 0 else 2, stride=4 if i == 0 else 2, bias=False))
        convs += [conv, nn.BatchNorm2d(cout), GELU()]
        cin = cout
    return nn.Sequential(*convs), cin


class CLIP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        t: TextConfig = cfg.text_cfg
        self.visual: VisionTransformer | ModifiedResNet | FastViT
        if cfg.vision_cfg.fastvit is not None:
            self.visual = FastViT(cfg.vision_cfg, cfg.embed_dim)  # initialises itself
        elif cfg.vision_cfg.is_resnet:
            self.visual = ModifiedResNet(cfg.vision_cfg, cfg.embed_dim)  # ReLU inside: quick_gelu is text-only
        else:
            self.visual = VisionTransformer(cfg.vision_cfg, cfg.embed_dim, cfg.quick_gelu)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, cfg.quick_gelu)
        self.ln_final = nn.LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        causal = torch.full((t.context_length, t.context_length), MASK_VALUE).triu_(1)
        self.register_buffer("attn_mask", None if t.no_causal_mask else causal, persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.cfg.text_cfg.width**-0.5)
        self.transformer.init_weights()
        if isinstance(self.visual, ModifiedResNet):
            self.visual.init_weights()
        elif isinstance(self.visual, VisionTransformer):
            self.visual.transformer.init_weights()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> [B, embed_dim] (not normalised)."""
        return self.visual(pixels)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, context_length] token ids -> [B, embed_dim] (not normalised)."""
        return _text_forward(self, input_ids)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return L2-normalised image and text features and exp(logit_scale)."""
        img = F.normalize(self.encode_image(pixels), dim=-1)
        txt = F.normalize(self.encode_text(input_ids), dim=-1)
        return img, txt, self.logit_scale.exp()


class ImageEncoder(nn.Module):
    """pixel_values [B, 3, H, W] -> image_embeds [B, D], L2-normalised. What gets exported."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.visual = clip.visual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixel_values), dim=-1)


class TextEncoder(nn.Module):
    """input_ids [B, L] -> text_embeds [B, D], L2-normalised. What gets exported.

    Holds only the text tower's modules, so an exported graph carries no image weights.
    """

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        mask = clip.attn_mask
        assert mask is None or isinstance(mask, torch.Tensor)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(_text_forward(self, input_ids), dim=-1)


def _text_forward(tower: CLIP | TextEncoder, input_ids: torch.Tensor) -> torch.Tensor:
    """Pooled at the end-of-text token, found as the argmax id: the tokenizer gives EOT the
    highest id in the vocabulary (as OpenAI's does) and pads with 0."""
    n = input_ids.shape[1]  # may be shorter than context_length: the trainer trims padding
    x = tower.token_embedding(input_ids) + tower.positional_embedding[:n]
    causal = tower.attn_mask
    mask = None if causal is None else causal[:n, :n].to(x.dtype)  # type: ignore[index]
    eot = input_ids.argmax(dim=-1)
    blocks = tower.transformer.resblocks
    last = blocks[-1]
    if isinstance(last, FirstTokenBlock):  # the export form (pooled_last_block): the last block for EOT alone
        for block in blocks[:-1]:
            x = block(x, mask)
        pooled = tower.ln_final(last(x, mask, eot)[:, 0])
    else:
        x = tower.ln_final(tower.transformer(x, mask))
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
    return pooled @ tower.text_projection


def create_model(name_or_cfg: str | ModelConfig) -> CLIP:
    from edgeclip.model.config import get_config

    cfg = get_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    return CLIP(cfg)
