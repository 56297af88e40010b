"""Hugging Face `CLIPModel` state dict -> OpenAI CLIP names, through an explicit key map.

Every HF tensor is either renamed by a rule here or listed as stale; anything else is an
error, so a new HF layout cannot be imported half-mapped. The separate q/k/v projections
are concatenated into `in_proj_weight`/`in_proj_bias` (q, k, v order, as nn.MultiheadAttention
and OpenAI expect), and the HF projections (Linear weights [D, W]) are transposed into
OpenAI's `visual.proj` / `text_projection` ([W, D]).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from edgeclip.errors import CheckpointError, ConfigError

# HF -> OpenAI for everything outside the transformer blocks
TOP_LEVEL = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's name
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
TOWERS = {"text_model": "transformer", "vision_model": "visual.transformer"}
# inside one block: HF suffix -> OpenAI suffix (q/k/v handled separately)
BLOCK = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
STALE = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
_BLOCK_KEY = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")
_QKV = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")


def is_hf_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("text_model.", "vision_model.")) for k in state)


def hf_to_openai(state: dict[str, torch.Tensor], qkv_order: str = "qkv") -> dict[str, torch.Tensor]:
    """Rename (and fuse/transpose) an HF CLIPModel state dict into OpenAI names.

    `qkv_order` exists for the test that proves a wrong mapping is caught; keep the default.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unmapped = []
    for key, t in state.items():
        if key in STALE:
            continue
        if key in TOP_LEVEL:
            out[TOP_LEVEL[key]] = t
        elif key in TRANSPOSED:
            out[TRANSPOSED[key]] = t.t().contiguous()
        elif (m := _BLOCK_KEY.match(key)) is None:
            unmapped.append(key)
        elif (q := _QKV.match(m[3])) is not None:
            prefix = f"{TOWERS[m[1]]}.resblocks.{m[2]}.attn.in_proj_{q[2]}"
            qkv.setdefault((prefix, q[2]), {})[q[1]] = t
        elif m[3] in BLOCK:
            out[f"{TOWERS[m[1]]}.resblocks.{m[2]}.{BLOCK[m[3]]}"] = t
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(
            f"Hugging Face checkpoint has {len(unmapped)} tensors with no mapping: {short_list(unmapped)}",
            fix="only CLIPModel checkpoints (ViT image tower) are supported",
        )
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"Hugging Face checkpoint lacks {kind} of {sorted({'q', 'k', 'v'} - set(parts))} "
                                  f"for {prefix}")
        out[prefix] = torch.cat([parts[c] for c in qkv_order])
    return out


def hf_architecture(config: dict[str, Any]) -> dict[str, Any]:
    """What the HF config.json says that tensor shapes cannot: heads and activations."""
    if config.get("model_type") not in (None, "clip"):
        raise ConfigError(f"Hugging Face model_type {config.get('model_type')!r} is not 'clip'",
                          fix="only transformers' CLIPModel checkpoints can be imported")
    text, vision = dict(config.get("text_config") or {}), dict(config.get("vision_config") or {})
    acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ConfigError(f"unsupported Hugging Face activations {sorted(acts)}",
                          fix="edgeclip supports one activation for both towers: quick_gelu or gelu")
    for name, cfg in (("text", text), ("vision", vision)):
        if float(cfg.get("layer_norm_eps", 1e-5)) != 1e-5:
            raise ConfigError(f"{name} layer_norm_eps {cfg['layer_norm_eps']} is not supported (1e-5 only)")
    return {
        "quick_gelu": acts == {"quick_gelu"},
        "text_heads": int(text.get("num_attention_heads", 8)),
        "vision_heads": int(vision.get("num_attention_heads", 12)),
        "eos_token_id": text.get("eos_token_id"),
    }


def short_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
