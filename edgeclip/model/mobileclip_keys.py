"""open_clip MobileCLIP / MobileCLIP2 state dicts (timm naming) -> edgeclip names, and their architecture.

open_clip builds these models as `CustomTextCLIP`: the text tower's tensors sit under `text.`
(OpenAI names below it) and the image tower under `visual.trunk.`, in timm's names. A FastViT
tower keeps them (edgeclip's FastViT is named as timm's); a timm ViT (MobileCLIP-B's
`vit_base_mci_224`, MobileCLIP2-L-14's `vit_large_patch14_clip_224`) is renamed to OpenAI's ViT.
The architecture is read from tensor shapes, except what shapes do not hold, taken from open_clip's
configs: the attention head width (32 in every timm MCi tower), the FastViT image size (256), and
whether the text tower is bidirectional (`no_causal_mask`: true with FastViT towers and in
MobileCLIP2-L-14, false in MobileCLIP-B and MobileCLIP2-B).
"""

from __future__ import annotations

import re

import torch

from edgeclip.bundle import PreprocessConfig
from edgeclip.errors import CheckpointError, ConfigError
from edgeclip.model.config import VisionConfig
from edgeclip.model.fastvit_config import FastViTConfig
from edgeclip.model.hf_keys import short_list

TRUNK, TEXT = "visual.trunk.", "text."
# tensors only the training form has, and the one name only the inference form has
TRAINING_FORM = ("conv_kxk.", "conv_scale.", ".large_conv.", ".token_mixer.mixer.", ".pos_emb.pos_enc.")
INFERENCE_FORM = ".reparam_conv."
FASTVIT_STEM = "visual.final_conv."  # what every FastViT has, in either form (a ConvNeXt has a visual.stem too)
FASTVIT_IMAGE_SIZE = 256
SUPPORTED = ("FastViT MCi image towers (MobileCLIP-S1/S2, MobileCLIP2-S0/S2/S3/S4) and the timm ViTs of "
             "MobileCLIP-B, MobileCLIP2-B and MobileCLIP2-L-14")
TIMM_VIT = "visual.blocks.0.attn.qkv.weight"
# timm ViT -> OpenAI ViT names (after `visual.trunk.` became `visual.`); the stem and head are renamed apart
TIMM_VIT_NAMES = [
    (r"visual\.patch_embed\.proj\.", "visual.conv1."), (r"visual\.norm_pre\.", "visual.ln_pre."),
    (r"visual\.norm\.", "visual.ln_post."), (r"visual\.blocks\.(\d+)\.", r"visual.transformer.resblocks.\1."),
    (r"\.norm1\.", ".ln_1."), (r"\.norm2\.", ".ln_2."), (r"\.attn\.qkv\.weight", ".attn.in_proj_weight"),
    (r"\.attn\.qkv\.bias", ".attn.in_proj_bias"), (r"\.attn\.proj\.", ".attn.out_proj."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."), (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]


def is_custom_text_clip(state: dict[str, torch.Tensor]) -> bool:
    """An open_clip CustomTextCLIP with a timm image tower (as MobileCLIP is)."""
    return any(k.startswith(TRUNK) for k in state) and any(k.startswith(TEXT) for k in state)


def custom_text_to_native(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Rename open_clip's `text.*` and `visual.trunk.*` to edgeclip's names; refuse towers it lacks.
    Returns the state and whether the text tower is bidirectional (`no_causal_mask`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(TRUNK):
            key = "visual." + key[len(TRUNK):]
        elif key.startswith(TEXT):
            key = key[len(TEXT):]
        out[key] = value
    if TIMM_VIT in out:
        mci_stem = any(k.startswith("visual.patch_embed.backbone.") for k in out)
        return timm_vit_to_openai(out), not mci_stem
    if not any(k.startswith(FASTVIT_STEM) for k in out):
        towers = sorted({".".join(k.split(".")[:2]) for k in out if k.startswith("visual.")})
        raise ConfigError(f"{source}: unsupported open_clip timm image tower (tensors: {short_list(towers)})",
                          fix=f"edgeclip imports {SUPPORTED}")
    check_training_form(out, source)
    return out, True


def timm_vit_to_openai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT image tower (`visual.*`) in OpenAI's ViT names; the rest of `state` as it is.

    timm's ConvStem `patch_embed.backbone.i.{conv,bn}` becomes edgeclip's `stem.{3i,3i+1}` (conv,
    BN, GELU per layer), its last conv `conv1`; the head's [E, W] weight becomes `proj` ([W, E])."""
    convs = _depth(state, "visual.patch_embed.backbone.")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ("visual.cls_token", "visual.pos_embed"):
            key, value = ("visual.class_embedding" if key.endswith("cls_token") else "visual.positional_embedding",
                          value.reshape(value.shape[-2:]) if key.endswith("pos_embed") else value.reshape(-1))
        elif key == "visual.head.weight":
            key, value = "visual.proj", value.t()
        elif key == "visual.head.bias":
            key = "visual.proj_bias"
        elif m := re.match(r"visual\.patch_embed\.backbone\.(\d+)\.(conv|bn)\.(.*)", key):
            i = int(m[1])
            key = (f"visual.conv1.{m[3]}" if i == convs - 1
                   else f"visual.stem.{3 * i + (m[2] == 'bn')}.{m[3]}")
        elif key.startswith("visual."):
            for pattern, repl in TIMM_VIT_NAMES:
                key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def check_training_form(state: dict[str, torch.Tensor], source: str) -> None:
    """Checkpoints hold the training form: refuse an inference-form or a mixed state dict."""
    training = [k for k in state if k.startswith("visual.") and any(m in k for m in TRAINING_FORM)]
    inference = [k for k in state if k.startswith("visual.") and INFERENCE_FORM in k]
    if training and inference:
        raise CheckpointError(
            f"{source} mixes training-form and reparameterized tensors ({short_list(training)} beside "
            f"{short_list(inference)}): it was saved while reparameterization was half done",
            fix="export the state dict again from a model wholly in training form (before reparameterize_model)")
    if inference:
        raise CheckpointError(
            f"{source} holds a reparameterized (inference-form) FastViT: its branches are merged and cannot be "
            "trained or exported as edgeclip does", fix="import the training-form checkpoint (as open_clip ships it)")


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m[1] for k in state if (m := pat.match(k))})


def _tensor(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"cannot infer the FastViT architecture: tensor '{key}' is missing",
                              fix=f"the file must hold a whole open_clip model with one of the {SUPPORTED}")
    return state[key]


def infer_fastvit(state: dict[str, torch.Tensor]) -> VisionConfig:
    """The FastViT tower's layout from its (edgeclip-named) tensors."""
    n = _depth(state, "visual.stages.")
    layers, widths, mixers, se, ratios = [], [], [], [], set()
    for i in range(n):
        stage = f"visual.stages.{i}."
        layers.append(_depth(state, stage + "blocks."))
        dim, hidden = _tensor(state, stage + "blocks.0.mlp.fc2.weight").shape[:2]
        widths.append(dim)
        ratios.add(hidden / dim)
        mixers.append("attention" if stage + "blocks.0.token_mixer.qkv.weight" in state else "repmixer")
        se.append(stage + "downsample.proj.0.se.fc1.weight" in state)
    if len(ratios) != 1 or n < 2:
        raise ConfigError(f"unsupported FastViT layout ({n} stages, MLP ratios {sorted(ratios)})",
                          fix=f"edgeclip imports {SUPPORTED}")
    first_attention = next((i for i, m in enumerate(mixers) if m == "attention"), None)
    norm = "batchnorm"
    if first_attention is not None and f"visual.stages.{first_attention}.blocks.0.norm.running_mean" not in state:
        norm = "layernorm"
    fastvit = FastViTConfig(
        layers=tuple(layers), widths=tuple(widths), mixers=tuple(mixers), se_downsample=tuple(se),
        mlp_ratio=ratios.pop(), attention_norm=norm, stem_scale_branch="visual.stem.0.conv_scale.conv.weight" in state)
    return VisionConfig(image_size=FASTVIT_IMAGE_SIZE, fastvit=fastvit)


def release_preprocess(vision: VisionConfig) -> PreprocessConfig | None:
    """How Apple's released weights expect pixels (open_clip's pretrained table), None for a tower
    that is no MobileCLIP's: MobileCLIP-S*/B, MobileCLIP2-S0/S2/B (MCi0-2, the mci stem) take [0, 1]
    pixels, bilinear; MobileCLIP2-S3/S4 (MCi3-4) OpenAI's mean and std, bilinear; MobileCLIP2-L-14
    (the timm ViT with a projection bias) OpenAI's mean and std, bicubic."""
    size = vision.image_size
    zero_one = PreprocessConfig(image_size=size, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    if vision.fastvit is not None:
        return zero_one if len(vision.fastvit.layers) == 4 else PreprocessConfig(size, interpolation="bilinear")
    if vision.stem == "mci":
        return zero_one
    if vision.proj_bias:
        return PreprocessConfig(image_size=size, interpolation="bicubic")
    return None
