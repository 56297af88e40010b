"""open_clip MobileCLIP / MobileCLIP2 state dicts (timm naming) -> edgeclip names, and their architecture.

open_clip builds these models as `CustomTextCLIP`: the text tower's tensors sit under `text.`
(OpenAI names below it) and the FastViT image tower under `visual.trunk.` (timm's names, which
edgeclip's FastViT keeps). The architecture is read from tensor shapes, except what shapes do not
hold: the attention head width (32 in every timm MCi tower), the image size (256 in every
open_clip MobileCLIP config with a FastViT tower) and the bidirectional text tower
(`no_causal_mask: true` in those same configs).
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
FASTVIT_STEM = "visual.stem.0."
FASTVIT_IMAGE_SIZE = 256
SUPPORTED = "FastViT MCi image towers (MobileCLIP-S1/S2, MobileCLIP2-S0/S2/S3/S4)"


def is_custom_text_clip(state: dict[str, torch.Tensor]) -> bool:
    """An open_clip CustomTextCLIP with a timm image tower (as MobileCLIP is)."""
    return any(k.startswith(TRUNK) for k in state) and any(k.startswith(TEXT) for k in state)


def custom_text_to_native(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename open_clip's `text.*` and `visual.trunk.*` to edgeclip's names; refuse towers it lacks."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(TRUNK):
            key = "visual." + key[len(TRUNK):]
        elif key.startswith(TEXT):
            key = key[len(TEXT):]
        out[key] = value
    if not any(k.startswith(FASTVIT_STEM) for k in out):
        towers = sorted({".".join(k.split(".")[:2]) for k in out if k.startswith("visual.")})
        raise ConfigError(f"{source}: unsupported open_clip timm image tower (tensors: {short_list(towers)})",
                          fix=f"edgeclip imports {SUPPORTED}; MobileCLIP-B's vit_base_mci_224 and other timm "
                              "towers are not supported yet")
    check_training_form(out, source)
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


def release_preprocess(vision: VisionConfig) -> PreprocessConfig:
    """How Apple's released weights expect pixels (open_clip's pretrained table): bilinear resize;
    MobileCLIP-S*/MobileCLIP2-S0/S2 (MCi0-2) take [0, 1] pixels, MobileCLIP2-S3/S4 (MCi3-4) OpenAI's
    mean and std."""
    assert vision.fastvit is not None
    if len(vision.fastvit.layers) == 4:
        return PreprocessConfig(image_size=vision.image_size, interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                                std=(1.0, 1.0, 1.0))
    return PreprocessConfig(image_size=vision.image_size, interpolation="bilinear")
