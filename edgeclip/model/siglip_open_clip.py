"""open_clip's SigLIP / SigLIP 2 checkpoints (a timm image tower, open_clip's text tower) -> Hugging
Face `SiglipModel` names, which edgeclip's SigLIP uses.

open_clip names the image tower as timm's ViT under `visual.trunk.` (fused `attn.qkv`, the MAP
head as `attn_pool` with a separate `q` and a fused `kv`) and the text tower as OpenAI's under
`text.` (fused `in_proj`, `text_projection` a linear layer with bias). What the tensors do not
hold comes from open_clip's and timm's definitions of the models it lists (3.3):
- heads: 12 at width 768, 16 at widths 1024, 1152 and 1536 (both towers);
- the activation: the text tower uses exact GELU in SigLIP and tanh-GELU in SigLIP 2 (its
  256,000-id Gemma vocabulary); the image tower uses exact GELU except in timm's
  `vit_base_patch32_siglip_256`, `vit_large_patch16_siglip_512`, `vit_so400m_patch16_siglip_*`
  and `vit_giantopt_patch16_siglip_*`, which use tanh-GELU;
- the image size: grid x patch (the -384 So400m/14 models, which drop a 6-pixel remainder, import
  at 378 px).
"""

from __future__ import annotations

import re

import torch

from edgeclip.errors import CheckpointError, ConfigError

HEADS = {768: 12, 1024: 16, 1152: 16, 1536: 16}
GEMMA_VOCAB = 256000
# (width, patch, image size or None for all) of the timm SigLIP towers built with tanh-GELU
TANH_VISION = {(768, 32, None), (1024, 16, 512), (1152, 16, None), (1536, 16, None)}
VISION = [
    (r"^visual\.trunk\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual\.trunk\.blocks\.(\d+)\.", r"vision_model.encoder.layers.\1."),
    (r"^visual\.trunk\.norm\.", "vision_model.post_layernorm."),
    (r"^visual\.trunk\.attn_pool\.norm\.", "vision_model.head.layernorm."),
    (r"^visual\.trunk\.attn_pool\.mlp\.", "vision_model.head.mlp."),
    (r"^visual\.trunk\.attn_pool\.proj\.", "vision_model.head.attention.out_proj."),
]
TEXT = [
    (r"^text\.transformer\.resblocks\.(\d+)\.", r"text_model.encoder.layers.\1."),
    (r"^text\.ln_final\.", "text_model.final_layer_norm."),
    (r"^text\.text_projection\.", "text_model.head."),
    (r"\.ln_1\.", ".layer_norm1."), (r"\.ln_2\.", ".layer_norm2."), (r"\.c_fc\.", ".fc1."), (r"\.c_proj\.", ".fc2."),
    (r"\.attn\.out_proj\.", ".self_attn.out_proj."),
]
BLOCK = [(r"\.norm1\.", ".layer_norm1."), (r"\.norm2\.", ".layer_norm2."), (r"\.attn\.proj\.", ".self_attn.out_proj.")]


def is_open_clip_siglip(state: dict[str, torch.Tensor]) -> bool:
    """An open_clip CustomTextCLIP with a timm SigLIP image tower (MAP head) and a logit bias."""
    return "visual.trunk.attn_pool.latent" in state and "logit_bias" in state


def open_clip_siglip_to_hf(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename (and split or join the fused projections of) an open_clip SigLIP state dict."""
    if "text.text_projection.weight" not in state:
        raise ConfigError(f"{source}: the text tower has no projection (open_clip's proj_type 'none', as in "
                          "ViT-SO400M-16-SigLIP-i18n-256); edgeclip's SigLIP text tower ends in a linear head",
                          fix="import a SigLIP checkpoint whose text tower has text_projection")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ("logit_scale", "logit_bias"):
            out[key] = value.reshape(1)
        elif key == "visual.trunk.pos_embed":
            out["vision_model.embeddings.position_embedding.weight"] = value.reshape(value.shape[-2:])
        elif key == "text.positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key == "text.token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "visual.trunk.attn_pool.latent":
            out["vision_model.head.probe"] = value
        elif m := re.match(r"visual\.trunk\.attn_pool\.(q|kv)\.(weight|bias)", key):
            continue  # joined below
        elif m := re.search(r"\.(attn\.qkv|attn\.in_proj_)\.?(weight|bias)$", key):
            prefix = _rename(key[: m.start()] + ".", VISION + BLOCK + TEXT)
            for name, part in zip(("q", "k", "v"), value.chunk(3), strict=True):
                out[f"{prefix}self_attn.{name}_proj.{m[2]}"] = part
        else:
            out[_rename(key, VISION + BLOCK + TEXT)] = value
    for kind in ("weight", "bias"):
        q, kv = state.get(f"visual.trunk.attn_pool.q.{kind}"), state.get(f"visual.trunk.attn_pool.kv.{kind}")
        if q is None or kv is None:
            raise CheckpointError(f"{source}: the MAP head's attn_pool.q/kv.{kind} is missing",
                                  fix="import a whole open_clip SigLIP state dict")
        out[f"vision_model.head.attention.in_proj_{kind}"] = torch.cat([q, kv])
    return out


def _rename(key: str, table: list[tuple[str, str]]) -> str:
    for pattern, repl in table:
        key = re.sub(pattern, repl, key)
    return key


def heads(width: int, source: str) -> int:
    if width not in HEADS:
        raise ConfigError(f"{source}: no open_clip SigLIP tower has width {width}; its heads are not in the tensors",
                          fix=f"edgeclip imports the widths open_clip lists: {sorted(HEADS)}")
    return HEADS[width]


def activations(width: int, patch: int, image_size: int, vocab: int) -> tuple[str, str]:
    """(image tower's, text tower's) activation, as open_clip builds the model with these shapes."""
    tanh = (width, patch, None) in TANH_VISION or (width, patch, image_size) in TANH_VISION
    return "gelu_tanh" if tanh else "gelu", "gelu_tanh" if vocab == GEMMA_VOCAB else "gelu"
