"""SigLIP in PyTorch (also fixed-resolution SigLIP 2): the CLIP interface, Hugging Face's names.

Every parameter is named as in transformers' `SiglipModel` (`vision_model.embeddings.
patch_embedding`, `text_model.encoder.layers.N.self_attn.q_proj`, `vision_model.head.probe`,
`logit_bias`, ...), so a Hugging Face state dict loads one to one, without a key map.

What differs from CLIP: the patch embedding has a bias, there is no class token and no pre-LN,
the image is pooled by a multi-head attention probe (MAP head) after the post-LN, the text tower
is bidirectional and pooled at its last position (the tokenizer pads to a fixed length, so that
is a pad or end token), both towers use tanh-GELU and LayerNorm eps 1e-6, the embedding width is
the image tower's width, and the logits carry a learnt bias: sigmoid(scale * cos + bias).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.errors import ConfigError
from edgeclip.model.config import ModelConfig
from edgeclip.model.layers import GELU

LN_EPS = 1e-6  # big_vision's and transformers' SigLIP default
# the sigmoid loss's initialisation (Zhai et al. 2023): t' = log 10, b = -10
INIT_LOGIT_SCALE, INIT_LOGIT_BIAS = math.log(10.0), -10.0


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over [B or 1, h, n, hd] tensors, no mask."""
    if torch.compiler.is_exporting():
        # written out, with K transposed once and the scale on Q: the form onnxruntime and
        # OpenVINO fuse (torch's SDPA decomposition reshapes K through a dynamic-shape chain)
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return logits.softmax(-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class SiglipAttention(nn.Module):
    """Bidirectional self-attention with separate q/k/v projections (transformers' names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[1:]
        h, hd = self.heads, d // self.heads
        # -1 for the batch: an exported graph then reshapes to constant shapes
        q, k, v = (p(x).reshape(-1, n, h, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(_attend(q, k, v).transpose(1, 2).reshape(-1, n, d))


class TanhGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class SiglipMLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        # big_vision's and transformers' tanh-GELU; exact GELU where open_clip's timm towers use it
        self.act: nn.Module = GELU() if act == "gelu" else TanhGELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, width: int, heads: int, hidden: int, act: str | None) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.self_attn = SiglipAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = SiglipMLP(width, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: str | None) -> None:
        super().__init__()
        hidden = round(width * mlp_ratio)  # So400m: 4304 / 1152 is not a round ratio
        self.layers = nn.ModuleList([SiglipEncoderLayer(width, heads, hidden, act) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ProbeAttention(nn.Module):
    """The MAP head's cross-attention, with nn.MultiheadAttention's parameter names.

    The query is the learnt probe, the same for every image, so its projection is computed once
    at [1, h, 1, hd] and broadcast over the batch: no repeat/expand by the batch size, which
    an exported graph would have to compute from the input's shape at run time.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, probe: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """probe [1, 1, W], x [B, N, W] -> [B, 1, W]."""
        n, d = x.shape[1:]
        h, hd = self.heads, d // self.heads
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(probe, wq, bq).reshape(1, 1, h, hd).transpose(1, 2)
        k = F.linear(x, wk, bk).reshape(-1, n, h, hd).transpose(1, 2)
        v = F.linear(x, wv, bv).reshape(-1, n, h, hd).transpose(1, 2)
        if not torch.compiler.is_exporting():
            q = q.expand(k.shape[0], -1, -1, -1)  # SDPA's CPU kernels want one batch size
        return self.out_proj(_attend(q, k, v).transpose(1, 2).reshape(-1, 1, d))


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, act: str | None) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width))
        self.attention = ProbeAttention(width, heads)
        self.layernorm = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = SiglipMLP(width, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, W] -> [B, W]."""
        x = self.attention(self.probe, x)
        x = x + self.mlp(self.layernorm(x))
        return x[:, 0]


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, width: int, patch: int, grid: int) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch, stride=patch)  # with bias
        self.position_embedding = nn.Embedding(grid * grid, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [B, g*g, W]
        return x + self.position_embedding.weight


class SiglipVisionTransformer(nn.Module):
    """Image tower: patches + positions -> blocks -> post-LN -> MAP head. [B, 3, S, S] -> [B, W]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        v = cfg.vision_cfg
        assert isinstance(v.layers, int)  # checked by SigLIP
        self.embeddings = SiglipVisionEmbeddings(v.width, v.patch_size, v.grid)
        self.encoder = SiglipEncoder(v.width, v.layers, v.heads, v.mlp_ratio, v.act)
        self.post_layernorm = nn.LayerNorm(v.width, eps=LN_EPS)
        self.head = SiglipMultiheadAttentionPoolingHead(v.width, v.heads, round(v.width * v.mlp_ratio), v.act)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.post_layernorm(self.encoder(self.embeddings(pixels))))


class SiglipTextEmbeddings(nn.Module):
    def __init__(self, vocab: int, width: int, context_length: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Embedding(context_length, width)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        return self.token_embedding(input_ids) + self.position_embedding.weight[:n]


class SiglipTextTransformer(nn.Module):
    """Text tower: bidirectional blocks -> final LN -> last position -> linear head. [B, L] -> [B, D]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        t = cfg.text_cfg
        self.embeddings = SiglipTextEmbeddings(t.vocab_size, t.width, t.context_length)
        self.encoder = SiglipEncoder(t.width, t.layers, t.heads, t.mlp_ratio, t.act)
        self.final_layer_norm = nn.LayerNorm(t.width, eps=LN_EPS)
        self.head = nn.Linear(t.width, cfg.embed_dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.final_layer_norm(self.encoder(self.embeddings(input_ids)))
        # the last position, not the end token: the ids are padded to a fixed length and the
        # padding is attended to, exactly as in training (big_vision, transformers)
        return self.head(x[:, -1])


class SigLIP(nn.Module):
    """The CLIP interface (`encode_image`, `encode_text`, `forward`, `logit_scale`) plus `logit_bias`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_siglip_config(cfg)
        self.cfg = cfg
        self.vision_model = SiglipVisionTransformer(cfg)
        self.text_model = SiglipTextTransformer(cfg)
        # shape [1], as in transformers' SiglipModel
        self.logit_scale = nn.Parameter(torch.full((1,), INIT_LOGIT_SCALE))
        self.logit_bias = nn.Parameter(torch.full((1,), INIT_LOGIT_BIAS))
        self.init_weights()

    @property
    def visual(self) -> nn.Module:
        """The image tower, under the name the trainer's tower locking uses."""
        return self.vision_model

    def init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("position_embedding.weight") or name.endswith("probe"):
                nn.init.normal_(p, std=p.shape[-1] ** -0.5)
            elif name.endswith("token_embedding.weight"):
                nn.init.normal_(p, std=0.02)
            elif p.ndim >= 2:
                nn.init.xavier_uniform_(p.view(p.shape[0], -1))
            elif "norm" not in name and name not in ("logit_scale", "logit_bias"):
                nn.init.zeros_(p)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, embed_dim] (not normalised)."""
        return self.vision_model(pixels)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids, padded to the context length -> [B, embed_dim] (not normalised)."""
        return self.text_model(input_ids)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised image and text features and exp(logit_scale) (a scalar, as CLIP's)."""
        img = F.normalize(self.encode_image(pixels), dim=-1)
        txt = F.normalize(self.encode_text(input_ids), dim=-1)
        return img, txt, self.logit_scale.exp()[0]

    def logits(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[B_img, B_txt] logits_per_image: scale * cos + bias (sigmoid of it is the probability)."""
        img, txt, scale = self(pixels, input_ids)
        return scale * img @ txt.t() + self.logit_bias


class SiglipImageEncoder(nn.Module):
    """pixel_values [B, 3, S, S] -> image_embeds [B, D], L2-normalised. What gets exported."""

    def __init__(self, model: SigLIP) -> None:
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.vision_model(pixel_values))


class SiglipTextEncoder(nn.Module):
    """input_ids [B, L] -> text_embeds [B, D], L2-normalised; only the text tower's weights."""

    def __init__(self, model: SigLIP) -> None:
        super().__init__()
        self.text_model = model.text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.text_model(input_ids))


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """F.normalize(x, dim=-1) with a broadcasting divide: F.normalize exports as an Expand of the
    norm to x's shape, read at run time through Shape + Concat; this form has no such chain."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def check_siglip_config(cfg: ModelConfig) -> None:
    """A SigLIP config: a ViT with a plain patch stem whose width is the embedding width."""
    v = cfg.vision_cfg
    if v.is_resnet or v.stem != "patch":
        raise ConfigError(f"SigLIP config '{cfg.name}' needs a ViT image tower with a patch stem",
                          fix="set vision_cfg.layers to an int and leave stem at 'patch'")
    if cfg.embed_dim != v.width:
        raise ConfigError(f"SigLIP config '{cfg.name}': embed_dim {cfg.embed_dim} must equal the image width "
                          f"{v.width} (the MAP head's output is the image embedding)",
                          fix=f"set embed_dim to {v.width}")
    if cfg.quick_gelu:
        raise ConfigError(f"SigLIP config '{cfg.name}' sets quick_gelu; SigLIP uses tanh-GELU",
                          fix="remove quick_gelu from the config")
